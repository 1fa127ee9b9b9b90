//! Mutual TLS: poold and chunkd of a `cluster up` cluster (which makes its
//! own CA) refuse a client with no certificate, a self-signed one, or one
//! from another cluster's CA before any RPC runs; the CLI says which
//! certificate was refused and why; nothing stored changes.

use std::error::Error;
use std::path::{Path, PathBuf};

use blobvirt_core::proto as pb;
use testbed::harness::cli::*;
use testbed::harness::data::*;
use testbed::harness::*;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// The identities a stranger might try, each as (label, cert, key).
fn strangers(c: &Cluster) -> Vec<(&'static str, PathBuf, PathBuf)> {
    let d = c.tmp.path();
    // Self-signed: a valid certificate for 127.0.0.1 that no CA signed.
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    p.subject_alt_names
        .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let cert = p.self_signed(&key).unwrap();
    let (ss_cert, ss_key) = (d.join("self.pem"), d.join("self.key"));
    std::fs::write(&ss_cert, cert.pem()).unwrap();
    write_key(&ss_key, &key.serialize_pem());
    // Another cluster's CA, through the CLI like an operator would.
    let other = d.join("other-ca");
    let o = other.display().to_string();
    ok(None, &["ca", "init", "--dir", &o]);
    ok(
        None,
        &["ca", "issue", "local", "--ip", "127.0.0.1", "--dir", &o],
    );
    vec![
        ("self-signed", ss_cert, ss_key),
        ("other CA", other.join("local.pem"), other.join("local.key")),
    ]
}

fn write_key(p: &Path, pem: &str) {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(p)
        .unwrap();
    f.write_all(pem.as_bytes()).unwrap();
}

/// A configuration file that trusts the cluster's CA but shows `cert`.
fn config_with(c: &Cluster, name: &str, cert: &Path, key: &Path) -> PathBuf {
    let f = c.tmp.path().join(format!("{name}.toml"));
    std::fs::write(
        &f,
        format!(
            "[cluster]\npool = [{:?}]\n[tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
            c.pool,
            c.dir.join("tls/ca.pem"),
            cert,
            key
        ),
    )
    .unwrap();
    f
}

fn cli_with(config: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(blobvirt())
        .args(args)
        .env_remove("BLOBVIRT_POOL")
        .env_remove("BLOBVIRT_CLUSTER_DIR")
        .env_remove("RUST_LOG")
        .env("BLOBVIRT_CONFIG", config)
        .output()
        .unwrap()
}

fn ca(c: &Cluster) -> Certificate {
    Certificate::from_pem(std::fs::read(c.dir.join("tls/ca.pem")).unwrap())
}

/// A TLS channel to `addr` trusting the cluster's CA, showing `identity`.
fn channel(c: &Cluster, addr: &str, identity: Option<(&Path, &Path)>) -> tonic::transport::Channel {
    let mut tls = ClientTlsConfig::new().ca_certificate(ca(c));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(
            std::fs::read(cert).unwrap(),
            std::fs::read(key).unwrap(),
        ));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_lazy()
}

/// A connection closed in or right after the handshake (TLS 1.3 sends the
/// server's refusal after the client finished), never an RPC's answer.
fn refused(e: &tonic::Status) -> bool {
    matches!(
        e.code(),
        tonic::Code::Unavailable | tonic::Code::Cancelled | tonic::Code::Unknown
    ) && e.source().is_some()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn addr_of(c: &Cluster, name: &str) -> String {
    let v = c.cluster_json();
    v["processes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap()["addr"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn poold_refuses_clients_outside_the_cluster() {
    let c = Cluster::up(2, 1);
    let img = c.tmp.path().join("img");
    write_image(&img, 2 * MIB, &[], 7);
    let i = img.display().to_string();
    c.ok(&["vol-import", &i, "base"]);
    let before = c.ok(&["vol-list", "--json"]);
    let poold = c.pool.trim_start_matches("https://").to_string();
    assert!(
        c.pool.starts_with("https://"),
        "cluster up serves TLS: {}",
        c.pool
    );

    // Refused in the handshake, before any RPC runs: no certificate, a
    // self-signed one, one from another CA.
    let rt = rt();
    let _in_rt = rt.enter();
    let ids = strangers(&c);
    let mut tries = vec![("no certificate", channel(&c, &poold, None))];
    for (label, cert, key) in &ids {
        tries.push((label, channel(&c, &poold, Some((cert, key)))));
    }
    for (label, ch) in tries {
        let e = rt
            .block_on(async {
                blobvirt_core::client::pool_client(ch)
                    .delete_volume(pb::DeleteVolumeRequest {
                        name: "base".into(),
                        version: 0,
                        force: true,
                    })
                    .await
            })
            .expect_err(label);
        assert!(refused(&e), "{label}: {e:?}");
    }
    // Plain HTTP/2 to the TLS port: refused too.
    let o = run(
        None,
        &[
            "vol-delete",
            "base",
            "--force",
            "--pool",
            &format!("http://{poold}"),
        ],
    );
    assert!(!o.status.success());

    // The CLI with a stranger's certificate says which and why.
    for (label, cert, key) in &ids {
        let cfg = config_with(&c, &label.replace(' ', "-"), cert, key);
        for args in [
            vec!["vol-import", &i, "stolen"],
            vec!["vol-delete", "base", "--force"],
        ] {
            let o = cli_with(&cfg, &args);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{label}: {args:?} ran: {err}");
            let line = err.trim_end().lines().last().unwrap_or("").to_string();
            assert!(
                line.contains(&format!("certificate {} is not accepted", cert.display()))
                    && line.contains("not signed by that CA"),
                "{label}: the sentence does not say which certificate and why: {line}"
            );
            assert_eq!(line.matches(". ").count(), 0, "one sentence: {line}");
        }
    }
    assert_eq!(
        c.ok(&["vol-list", "--json"]),
        before,
        "something stored changed"
    );
    let log = std::fs::read_to_string(c.dir.join("logs/poold.log")).unwrap();
    assert!(
        log.lines()
            .any(|l| l.contains("published") && l.contains("CN=local")),
        "poold did not log the certificate of the publish:\n{log}"
    );
}

#[test]
fn chunkd_refuses_clients_outside_the_cluster() {
    let c = Cluster::up(1, 1);
    let node = addr_of(&c, "chunkd-1");
    let data = bytes::Bytes::from(vec![42u8; 64 * 1024]);
    let id = blobvirt_core::ChunkId::of(&data);
    let put = |ch| {
        let data = data.clone();
        async move {
            blobvirt_core::client::chunk_client(ch)
                .put(pb::PutRequest {
                    id: id.0.to_vec().into(),
                    data,
                    staged: false,
                })
                .await
        }
    };
    let rt = rt();
    let _in_rt = rt.enter();
    let mut tries = vec![("no certificate", channel(&c, &node, None))];
    let ids = strangers(&c);
    for (label, cert, key) in &ids {
        tries.push((label, channel(&c, &node, Some((cert, key)))));
    }
    for (label, ch) in tries {
        let e = rt.block_on(put(ch)).expect_err(label);
        assert!(refused(&e), "{label}: {e:?}");
    }
    // The cluster's own certificate is served, and the chunk is not there.
    let tls = c.dir.join("tls");
    let own = channel(
        &c,
        &node,
        Some((&tls.join("local.pem"), &tls.join("local.key"))),
    );
    let mut cl = blobvirt_core::client::chunk_client(own);
    rt.block_on(async {
        let st = cl
            .stats(pb::StatsRequest {})
            .await
            .expect("own certificate served");
        assert_eq!(st.get_ref().chunks, 0, "a stranger stored a chunk");
        let got = cl
            .get(pb::GetRequest {
                id: id.0.to_vec().into(),
            })
            .await;
        assert_eq!(got.unwrap_err().code(), tonic::Code::NotFound);
    });
}
