//! Metadata tests, run on every engine through the real meta layer.

use blobvirt_core::proto as pb;
use blobvirt_core::tree::depth_for;
use blobvirt_core::ChunkId;
use bytes::Bytes;
use rand::{Rng, SeedableRng};

use super::*;
use crate::kv::Engine;

const CS: u32 = 65536;

fn cid(n: u32) -> ChunkId {
    ChunkId::of(&n.to_le_bytes())
}

fn change(i: u64, c: Option<u32>) -> pb::ChunkChange {
    pb::ChunkChange {
        index: i,
        id: c.map_or_else(Bytes::new, |c| Bytes::copy_from_slice(&cid(c).0)),
    }
}

fn req(
    name: &str,
    base: Option<u64>,
    n_chunks: u64,
    ch: &[(u64, Option<u32>)],
) -> pb::PublishRequest {
    pb::PublishRequest {
        name: name.into(),
        create: base.is_none(),
        chunk_size: CS,
        base_version: base.unwrap_or(0),
        size: n_chunks * CS as u64,
        changes: ch.iter().map(|(i, c)| change(*i, *c)).collect(),
        label: String::new(),
        gc_epoch: 0,
        request_id: Default::default(),
    }
}

fn publish(m: &Meta, r: &pb::PublishRequest) -> u64 {
    match m.publish(r).unwrap() {
        PublishOutcome::Published(v) => v,
        o => panic!("unexpected {o:?}"),
    }
}

fn resolve_all(m: &Meta, name: &str, v: u64) -> Vec<Option<ChunkId>> {
    m.resolve(name, v, 0, 0)
        .unwrap()
        .chunks
        .iter()
        .map(|b| ChunkId::from_slice(b))
        .collect()
}

fn expect(n: usize, set: &[(usize, u32)]) -> Vec<Option<ChunkId>> {
    let mut v = vec![None; n];
    for (i, c) in set {
        v[*i] = Some(cid(*c));
    }
    v
}

fn create_publish_resolve(m: Meta) {
    let v = publish(
        &m,
        &req("a", None, 10, &[(0, Some(1)), (3, Some(2)), (9, Some(3))]),
    );
    assert_eq!(v, 1);
    assert_eq!(
        resolve_all(&m, "a", 1),
        expect(10, &[(0, 1), (3, 2), (9, 3)])
    );
    let v2 = publish(
        &m,
        &req("a", Some(1), 10, &[(3, None), (4, Some(4)), (4, Some(5))]),
    );
    assert_eq!(v2, 2);
    assert_eq!(
        resolve_all(&m, "a", 0),
        expect(10, &[(0, 1), (4, 5), (9, 3)])
    );
    assert_eq!(
        resolve_all(&m, "a", 1),
        expect(10, &[(0, 1), (3, 2), (9, 3)])
    );
    let part = m.resolve("a", 2, 3, 2).unwrap();
    assert_eq!(part.first_chunk, 3);
    assert_eq!(part.chunks.len(), 2);
    assert!(part.chunks[0].is_empty());
    assert_eq!(&part.chunks[1][..], &cid(5).0);
    assert_eq!(
        (part.version, part.chunk_size, part.size),
        (2, CS, 10 * CS as u64)
    );
    assert!(m.resolve("a", 0, 10, 0).unwrap().chunks.is_empty());
    assert_eq!(m.resolve("a", 0, 8, 100).unwrap().chunks.len(), 2);
    let info = m.get_blob("a").unwrap();
    assert_eq!(info.latest_version, 2);
    assert_eq!(
        info.versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(info.origin, "");
    publish(&m, &req("b", None, 1, &[(0, Some(1))]));
    let names: Vec<_> = m
        .list_blobs()
        .unwrap()
        .into_iter()
        .map(|b| b.name)
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    let s = m.stats().unwrap();
    assert_eq!(
        (s.blobs, s.versions, s.live_chunks),
        (2, 3, 4),
        "chunk 4 was overwritten in the same publish"
    );
    // A one-chunk volume has its chunk as the root (depth 0).
    assert_eq!(resolve_all(&m, "b", 0), expect(1, &[(0, 1)]));
    // Resolve replies are capped.
    publish(&m, &req("huge", None, 200_000, &[(199_999, Some(9))]));
    let r = m.resolve("huge", 0, 0, 0).unwrap();
    assert_eq!(r.chunks.len() as u64, MAX_RESOLVE);
    let last = m.resolve("huge", 0, 199_999, 0).unwrap();
    assert_eq!(&last.chunks[0][..], &cid(9).0);
}

fn shadowing_is_cheap(m: Meta) {
    let n = 4096u64;
    let all: Vec<_> = (0..n).map(|i| (i, Some(i as u32))).collect();
    publish(&m, &req("big", None, n, &all));
    let before = m.stats().unwrap().meta_nodes;
    assert!(before >= n / 2);
    let changed = [(5, Some(100_000)), (2000, None), (4095, Some(100_001))];
    publish(&m, &req("big", Some(1), n, &changed));
    let added = m.stats().unwrap().meta_nodes - before;
    let bound = changed.len() as u64 * (depth_for(n) as u64 + 2);
    assert!(added <= bound, "{added} nodes added, bound {bound}");
    let v2 = resolve_all(&m, "big", 2);
    assert_eq!(v2[5], Some(cid(100_000)));
    assert_eq!(v2[2000], None);
    assert_eq!(v2[1999], Some(cid(1999)));
    // Clones add no nodes at all.
    let nodes = m.stats().unwrap().meta_nodes;
    let info = m.clone_volume("big", 1, "copy").unwrap();
    assert_eq!(info.origin, "big@1");
    assert_eq!(info.latest_version, 1);
    assert_eq!(m.stats().unwrap().meta_nodes, nodes);
    assert_eq!(resolve_all(&m, "copy", 0), resolve_all(&m, "big", 1));
    // Writing to the clone leaves the source alone.
    publish(&m, &req("copy", Some(1), n, &[(7, Some(7777))]));
    assert_eq!(resolve_all(&m, "big", 1)[7], Some(cid(7)));
    assert_eq!(resolve_all(&m, "copy", 2)[7], Some(cid(7777)));
}

fn delete_releases_everything(m: Meta) {
    publish(
        &m,
        &req("a", None, 50, &[(0, Some(1)), (10, Some(2)), (49, Some(3))]),
    );
    publish(&m, &req("a", Some(1), 50, &[(10, Some(4)), (11, Some(1))]));
    m.clone_volume("a", 1, "c").unwrap();
    publish(&m, &req("c", Some(1), 80, &[(70, Some(5))]));
    publish(&m, &req("d", None, 1, &[(0, Some(6))]));
    publish(&m, &req("d", Some(1), 1, &[(0, Some(7))]));
    assert_eq!(m.stats().unwrap().live_chunks, 7);
    // Deleting version 1 of "a" keeps what "c" and a@2 still use.
    m.delete_volume("a", 1).unwrap();
    assert_eq!(
        resolve_all(&m, "c", 1),
        expect(50, &[(0, 1), (10, 2), (49, 3)])
    );
    assert_eq!(m.stats().unwrap().gc_pending, 0);
    m.delete_volume("c", 0).unwrap();
    // Chunk 2 and 5 were only in c's versions now.
    let s = m.stats().unwrap();
    assert_eq!((s.live_chunks, s.gc_pending), (5, 2));
    assert_eq!(m.chunk_refs(&cid(2)).unwrap(), 0);
    for name in ["a", "d"] {
        m.delete_volume(name, 0).unwrap();
    }
    let s = m.stats().unwrap();
    assert_eq!(
        (
            s.blobs,
            s.versions,
            s.meta_nodes,
            s.live_chunks,
            s.gc_pending
        ),
        (0, 0, 0, 0, 7)
    );
    assert!(m.list_blobs().unwrap().is_empty());
    // GC drains the queue and moves the epoch.
    let ids = m.gc_mark(3600, false).unwrap();
    assert!(ids.is_empty(), "the grace delay holds chunks back");
    let ids = m.gc_mark(3600, true).unwrap();
    assert_eq!(ids.len(), 7);
    assert_eq!(m.gc_finish(&ids).unwrap(), 7);
    assert_eq!(m.gc_epoch().unwrap(), 1);
    assert_eq!(m.stats().unwrap().gc_pending, 0);
}

fn resize_grows_and_shrinks(m: Meta) {
    publish(&m, &req("r", None, 5, &[(0, Some(1)), (4, Some(2))]));
    publish(&m, &req("r", Some(1), 20, &[(17, Some(3))]));
    assert_eq!(
        resolve_all(&m, "r", 2),
        expect(20, &[(0, 1), (4, 2), (17, 3)])
    );
    publish(&m, &req("r", Some(2), 3, &[(1, Some(4))]));
    assert_eq!(resolve_all(&m, "r", 3), expect(3, &[(0, 1), (1, 4)]));
    publish(&m, &req("r", Some(3), 10, &[]));
    assert_eq!(resolve_all(&m, "r", 4), expect(10, &[(0, 1), (1, 4)]));
    // A size that is not a multiple of the chunk size rounds up.
    let mut r = req("r", Some(4), 0, &[(2, Some(5))]);
    r.size = 2 * CS as u64 + 1;
    publish(&m, &r);
    assert_eq!(
        resolve_all(&m, "r", 5),
        expect(3, &[(0, 1), (1, 4), (2, 5)])
    );
    publish(&m, &req("r", Some(5), 0, &[]));
    assert!(resolve_all(&m, "r", 6).is_empty());
    assert_eq!(
        resolve_all(&m, "r", 2),
        expect(20, &[(0, 1), (4, 2), (17, 3)])
    );
    m.delete_volume("r", 0).unwrap();
    let s = m.stats().unwrap();
    assert_eq!((s.meta_nodes, s.live_chunks), (0, 0), "resize leaked");
}

fn code(e: MetaError) -> (&'static str, String) {
    let msg = e.to_string();
    let c = match e {
        MetaError::NotFound(_) => "not_found",
        MetaError::AlreadyExists(_) => "exists",
        MetaError::InvalidArgument(_) => "invalid",
        MetaError::FailedPrecondition(_) => "precondition",
        _ => "other",
    };
    (c, msg)
}

fn errors(m: Meta) {
    let nf = |e: MetaError| {
        let (c, msg) = code(e);
        assert_eq!(c, "not_found");
        assert_eq!(
            msg,
            "volume nope does not exist; list volumes with blobvirt vol-list"
        );
    };
    nf(m.get_blob("nope").unwrap_err());
    nf(m.resolve("nope", 0, 0, 0).unwrap_err());
    nf(m.publish(&req("nope", Some(1), 1, &[])).unwrap_err());
    nf(m.clone_volume("nope", 0, "x").unwrap_err());
    nf(m.delete_volume("nope", 0).unwrap_err());
    nf(m.put_profile("nope", &[1]).unwrap_err());
    nf(m.get_profile("nope").unwrap_err());

    publish(&m, &req("v", None, 4, &[(0, Some(1))]));
    publish(&m, &req("v", Some(1), 4, &[(1, Some(2))]));
    publish(&m, &req("v", Some(2), 4, &[(2, Some(3))]));
    m.delete_volume("v", 2).unwrap();
    let (c, msg) = code(m.resolve("v", 2, 0, 0).unwrap_err());
    assert_eq!(c, "not_found");
    assert_eq!(msg, "volume v has no version 2; its versions are 1, 3");
    assert_eq!(
        code(m.clone_volume("v", 9, "w").unwrap_err()).0,
        "not_found"
    );
    assert_eq!(code(m.delete_volume("v", 2).unwrap_err()).0, "not_found");

    let (c, msg) = code(m.publish(&req("v", None, 4, &[])).unwrap_err());
    assert_eq!(c, "exists");
    assert_eq!(
        msg,
        "volume v already exists; pick another name or add --new-version"
    );
    assert_eq!(code(m.clone_volume("v", 0, "v").unwrap_err()).0, "exists");

    let (c, msg) = code(m.publish(&req("v", Some(1), 4, &[])).unwrap_err());
    assert_eq!(c, "precondition");
    assert!(
        msg.starts_with("volume v is at version 3, not 1; "),
        "{msg}"
    );

    let mut bad = req("new", None, 4, &[]);
    bad.chunk_size = 1000;
    assert_eq!(code(m.publish(&bad).unwrap_err()).0, "invalid");
    bad.chunk_size = 8 << 20;
    assert_eq!(code(m.publish(&bad).unwrap_err()).0, "invalid");
    let (c, msg) = code(
        m.publish(&req("v", Some(3), 4, &[(4, Some(1))]))
            .unwrap_err(),
    );
    assert_eq!(c, "invalid");
    assert!(
        msg.contains("chunk index 4 is past the end of volume v"),
        "{msg}"
    );
    let mut short = req("v", Some(3), 4, &[]);
    short.changes.push(pb::ChunkChange {
        index: 0,
        id: Bytes::from_static(b"short"),
    });
    assert_eq!(code(m.publish(&short).unwrap_err()).0, "invalid");
    let mut wrong_cs = req("v", Some(3), 4, &[]);
    wrong_cs.chunk_size = CS * 2;
    assert_eq!(code(m.publish(&wrong_cs).unwrap_err()).0, "invalid");
    for name in ["", "a/b", "a@1", "..", "-x"] {
        assert_eq!(
            code(m.publish(&req(name, None, 1, &[])).unwrap_err()).0,
            "invalid"
        );
        assert_eq!(code(m.clone_volume("v", 0, name).unwrap_err()).0, "invalid");
    }

    m.delete_volume("v", 1).unwrap();
    let (c, msg) = code(m.delete_volume("v", 3).unwrap_err());
    assert_eq!(c, "precondition");
    assert_eq!(
        msg,
        "version 3 is the only version of volume v; delete the volume with blobvirt vol-delete v"
    );
    // Nothing above changed the volume, and numbers are never reused.
    assert_eq!(
        resolve_all(&m, "v", 3),
        expect(4, &[(0, 1), (1, 2), (2, 3)])
    );
    assert_eq!(publish(&m, &req("v", Some(3), 4, &[])), 4);
    assert!(!m.exists("new").unwrap());
}

fn reupload_protocol(m: Meta) {
    publish(&m, &req("a", None, 2, &[(0, Some(1)), (1, Some(2))]));
    m.delete_volume("a", 0).unwrap();
    assert_eq!(m.stats().unwrap().gc_pending, 2);
    // A pending chunk is resurrected by a publish that uses it.
    publish(&m, &req("b", None, 1, &[(0, Some(1))]));
    let s = m.stats().unwrap();
    assert_eq!((s.gc_pending, s.live_chunks), (1, 1));
    // Chunk 2 being deleted: a publish naming it is refused, nothing changes.
    let ids = m.gc_mark(0, true).unwrap();
    assert_eq!(ids, vec![cid(2)]);
    let out = m
        .publish(&req("c", None, 2, &[(0, Some(1)), (1, Some(2))]))
        .unwrap();
    assert_eq!(
        out,
        PublishOutcome::Reupload {
            chunks: vec![cid(2)],
            gc_epoch: 0
        }
    );
    assert!(!m.exists("c").unwrap());
    assert_eq!(m.gc_finish(&ids).unwrap(), 1);
    // After the GC the client's epoch is stale: unreferenced chunks must be
    // uploaded again; referenced ones never.
    let out = m
        .publish(&req("c", None, 2, &[(0, Some(1)), (1, Some(2))]))
        .unwrap();
    assert_eq!(
        out,
        PublishOutcome::Reupload {
            chunks: vec![cid(2)],
            gc_epoch: 1
        }
    );
    let mut retry = req("c", None, 2, &[(0, Some(1)), (1, Some(2))]);
    retry.gc_epoch = 1;
    assert_eq!(publish(&m, &retry), 1);
    assert_eq!(resolve_all(&m, "c", 1), expect(2, &[(0, 1), (1, 2)]));
    let s = m.stats().unwrap();
    assert_eq!((s.gc_pending, s.live_chunks), (0, 2));
}

fn profiles(m: Meta) {
    publish(&m, &req("img", None, 8, &[]));
    assert!(m.get_profile("img").unwrap().is_empty());
    m.put_profile("img", &[5, 1, 7]).unwrap();
    m.clone_volume("img", 0, "vm1").unwrap();
    m.clone_volume("vm1", 0, "vm2").unwrap();
    assert_eq!(m.get_profile("vm2").unwrap(), vec![5, 1, 7]);
    m.put_profile("vm1", &[2]).unwrap();
    assert_eq!(m.get_profile("vm2").unwrap(), vec![2]);
    assert_eq!(m.get_profile("img").unwrap(), vec![5, 1, 7]);
    m.delete_volume("vm1", 0).unwrap();
    assert!(m.get_profile("vm2").unwrap().is_empty());
    let long: Vec<u64> = (0..(MAX_PROFILE as u64 + 10)).collect();
    m.put_profile("img", &long).unwrap();
    assert_eq!(m.get_profile("img").unwrap().len(), MAX_PROFILE);
}

/// Random publishes, clones, resizes and deletes against a model.
fn matches_model(m: Meta) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    // name -> live versions (number, model)
    type Versions = Vec<(u64, Vec<Option<u32>>)>;
    let mut vols: Vec<(String, Versions)> = Vec::new();
    for step in 0..150 {
        let pick = rng.gen_range(0..10);
        if vols.is_empty() || pick == 0 {
            let n = rng.gen_range(0..40u64);
            let name = format!("v{step}");
            let mut ch = Vec::new();
            for i in 0..n {
                if rng.gen_bool(0.5) {
                    ch.push((i, Some(rng.gen_range(0..30))));
                }
            }
            publish(&m, &req(&name, None, n, &ch));
            let mut model = vec![None; n as usize];
            for (i, c) in &ch {
                model[*i as usize] = *c;
            }
            vols.push((name, vec![(1, model)]));
            continue;
        }
        let vi = rng.gen_range(0..vols.len());
        let (name, vs) = &mut vols[vi];
        let (latest, model) = vs.last().unwrap().clone();
        match pick {
            1 => {
                let dst = format!("c{step}");
                m.clone_volume(name, latest, &dst).unwrap();
                vols.push((dst, vec![(1, model)]));
            }
            2 if vs.len() > 1 => {
                let (v, _) = vs.remove(rng.gen_range(0..vs.len()));
                m.delete_volume(name, v).unwrap();
            }
            3 => {
                m.delete_volume(name, 0).unwrap();
                vols.remove(vi);
            }
            _ => {
                let n = if pick == 4 {
                    rng.gen_range(0..50u64)
                } else {
                    model.len() as u64
                };
                let mut next = model.clone();
                next.resize(n as usize, None);
                let mut ch = Vec::new();
                for _ in 0..rng.gen_range(0..6) {
                    if n > 0 {
                        let c = rng.gen_bool(0.8).then(|| rng.gen_range(0..30));
                        ch.push((rng.gen_range(0..n), c));
                    }
                }
                for (i, c) in &ch {
                    next[*i as usize] = *c;
                }
                let v = publish(&m, &req(name, Some(latest), n, &ch));
                assert!(v > latest);
                vs.push((v, next));
            }
        }
        assert_eq!(m.check().unwrap(), Vec::<String>::new(), "step {step}");
        for (name, vs) in &vols {
            for (v, model) in vs {
                let want: Vec<_> = model.iter().map(|c| c.map(cid)).collect();
                assert_eq!(resolve_all(&m, name, *v), want, "{name}@{v} at step {step}");
            }
        }
    }
    for (name, _) in &vols {
        m.delete_volume(name, 0).unwrap();
    }
    let s = m.stats().unwrap();
    assert_eq!(
        (s.blobs, s.versions, s.meta_nodes, s.live_chunks),
        (0, 0, 0, 0)
    );
}

fn reopen_keeps_everything(engine: Engine) {
    let d = tempfile::tempdir().unwrap();
    {
        let m = Meta::open(engine, d.path()).unwrap();
        publish(&m, &req("p", None, 3, &[(1, Some(1))]));
        m.put_member("n1", "127.0.0.1:9").unwrap();
    }
    let m = Meta::open(engine, d.path()).unwrap();
    assert_eq!(resolve_all(&m, "p", 1), expect(3, &[(1, 1)]));
    assert_eq!(
        m.members().unwrap(),
        vec![("n1".into(), "127.0.0.1:9".into())]
    );
    assert_eq!(publish(&m, &req("p", Some(1), 3, &[])), 2);
}

fn revert_and_label(m: Meta) {
    publish(&m, &req("a", None, 20, &[(0, Some(1)), (7, Some(2))]));
    publish(&m, &req("a", Some(1), 24, &[(7, Some(3)), (21, Some(4))]));
    let nodes = m.stats().unwrap().meta_nodes;
    // Revert to version 1: a new version 3 with version 1's content and size.
    let v = m.revert_volume("a", 1, "revert:x").unwrap();
    assert_eq!(v, 3);
    assert_eq!(m.stats().unwrap().meta_nodes, nodes, "revert adds no nodes");
    assert_eq!(resolve_all(&m, "a", 0), resolve_all(&m, "a", 1));
    assert_eq!(m.resolve("a", 0, 0, 0).unwrap().size, 20 * CS as u64);
    let info = m.get_blob("a").unwrap();
    assert_eq!(info.latest_version, 3);
    assert_eq!(info.versions[2].label, "revert:x");
    // The shared root survives deleting the version it came from.
    m.delete_volume("a", 1).unwrap();
    assert_eq!(resolve_all(&m, "a", 3), expect(20, &[(0, 1), (7, 2)]));
    assert_eq!(m.chunk_refs(&cid(2)).unwrap(), 1);
    // Publishing on top of the reverted version works as usual.
    assert_eq!(publish(&m, &req("a", Some(3), 20, &[(1, Some(5))])), 4);
    assert_eq!(resolve_all(&m, "a", 3), expect(20, &[(0, 1), (7, 2)]));
    // Labels change in place; 0 = latest.
    let vi = m.label_version("a", 2, "snapshot:d/s1").unwrap();
    assert_eq!((vi.version, vi.label.as_str()), (2, "snapshot:d/s1"));
    assert_eq!(m.label_version("a", 0, "").unwrap().version, 4);
    let labels: Vec<_> = m
        .get_blob("a")
        .unwrap()
        .versions
        .into_iter()
        .map(|v| (v.version, v.label))
        .collect();
    assert_eq!(
        labels,
        vec![
            (2, "snapshot:d/s1".to_string()),
            (3, "revert:x".to_string()),
            (4, String::new())
        ]
    );
    // Errors: unknown volume or version, version 0; nothing changes.
    let before = m.stats().unwrap();
    assert_eq!(
        code(m.revert_volume("nope", 1, "").unwrap_err()).0,
        "not_found"
    );
    let (c, msg) = code(m.revert_volume("a", 1, "").unwrap_err());
    assert_eq!(c, "not_found");
    assert!(msg.contains("versions are 2, 3, 4"), "{msg}");
    assert_eq!(code(m.revert_volume("a", 0, "").unwrap_err()).0, "invalid");
    assert_eq!(
        code(m.label_version("a", 9, "x").unwrap_err()).0,
        "not_found"
    );
    let after = m.stats().unwrap();
    assert_eq!(
        (before.versions, before.meta_nodes),
        (after.versions, after.meta_nodes)
    );
    // Deleting everything releases the shared root exactly once per version.
    m.delete_volume("a", 0).unwrap();
    assert_eq!(m.stats().unwrap().live_chunks, 0);
}

fn with_id(mut r: pb::PublishRequest, id: u8) -> pb::PublishRequest {
    r.request_id = Bytes::from(vec![id; 16]);
    r
}

/// A publish resent with its request id (its answer was lost) answers the
/// version the first try made and publishes nothing; without an id, or
/// with another, a stale base is still refused. Reverts and clones too.
fn idempotent_publish(m: Meta) {
    let create = with_id(req("i", None, 4, &[(0, Some(1))]), 1);
    assert_eq!(publish(&m, &create), 1);
    assert_eq!(publish(&m, &create), 1, "a resent create");
    let next = with_id(req("i", Some(1), 4, &[(1, Some(2))]), 2);
    assert_eq!(publish(&m, &next), 2);
    let after = with_id(req("i", Some(2), 4, &[(2, Some(3))]), 3);
    assert_eq!(publish(&m, &after), 3);
    // The answer of version 2's publish was lost, and the volume moved on.
    assert_eq!(publish(&m, &next), 2, "a resent publish");
    assert_eq!(m.get_blob("i").unwrap().latest_version, 3);
    assert_eq!(m.stats().unwrap().versions, 3);
    let other = with_id(req("i", Some(2), 4, &[(1, Some(9))]), 4);
    assert_eq!(code(m.publish(&other).unwrap_err()).0, "precondition");
    let plain = req("i", Some(2), 4, &[(1, Some(9))]);
    assert_eq!(code(m.publish(&plain).unwrap_err()).0, "precondition");
    // A revert does not carry the id of the version it copies: id 3 on
    // base 4 matches no version after 4.
    assert_eq!(m.revert_volume("i", 2, "").unwrap(), 4);
    assert_eq!(m.revert_volume("i", 3, "").unwrap(), 5);
    let again = with_id(req("i", Some(4), 4, &[(2, Some(3))]), 3);
    assert_eq!(code(m.publish(&again).unwrap_err()).0, "precondition");
    assert_eq!(m.get_blob("i").unwrap().latest_version, 5);
    assert_eq!(resolve_all(&m, "i", 4), expect(4, &[(0, 1), (1, 2)]));
    // A resent revert and a resent clone answer what their first try made.
    assert_eq!(m.revert_volume_once("i", 1, "r", &[8; 16]).unwrap(), 6);
    assert_eq!(m.revert_volume_once("i", 1, "r", &[8; 16]).unwrap(), 6);
    assert_eq!(m.revert_volume_once("i", 1, "r", &[9; 16]).unwrap(), 7);
    let c = m.clone_volume_once("i", 6, "ic", &[10; 16]).unwrap();
    assert_eq!(m.clone_volume_once("i", 6, "ic", &[10; 16]).unwrap(), c);
    assert_eq!(
        code(m.clone_volume_once("i", 6, "ic", &[11; 16]).unwrap_err()).0,
        "exists"
    );
    assert_eq!(code(m.clone_volume("i", 6, "ic").unwrap_err()).0, "exists");
    assert_eq!(m.stats().unwrap().blobs, 2);
    assert_eq!(m.get_blob("i").unwrap().latest_version, 7);
}

macro_rules! on_engines {
    ($($t:ident),*) => {
        mod redb {
            $( #[test] fn $t() {
                let d = tempfile::tempdir().unwrap();
                let m = super::Meta::open(super::Engine::Redb, d.path()).unwrap();
                super::$t(m.clone());
                assert_eq!(m.check().unwrap(), Vec::<String>::new());
            } )*
            #[test] fn reopen() { super::reopen_keeps_everything(super::Engine::Redb) }
        }
        mod sled {
            $( #[test] fn $t() {
                let d = tempfile::tempdir().unwrap();
                let m = super::Meta::open(super::Engine::Sled, d.path()).unwrap();
                super::$t(m.clone());
                assert_eq!(m.check().unwrap(), Vec::<String>::new());
            } )*
            #[test] fn reopen() { super::reopen_keeps_everything(super::Engine::Sled) }
        }
        mod etcd {
            $( #[test] fn $t() {
                let etcd = testbed::harness::etcd::EtcdCluster::start(1);
                let o = crate::kv::etcd_engine::EtcdOptions::new(etcd.endpoints(), "/t/");
                let d = tempfile::tempdir().unwrap();
                let kv = crate::kv::open(super::Engine::Etcd, d.path(), Some(&o)).unwrap();
                let m = super::Meta::new(kv).unwrap();
                super::$t(m.clone());
                assert_eq!(m.check().unwrap(), Vec::<String>::new());
            } )*
        }
    };
}

on_engines!(
    create_publish_resolve,
    shadowing_is_cheap,
    delete_releases_everything,
    resize_grows_and_shrinks,
    errors,
    reupload_protocol,
    profiles,
    matches_model,
    revert_and_label,
    idempotent_publish
);

#[test]
fn check_finds_damage() {
    let d = tempfile::tempdir().unwrap();
    let m = Meta::open(Engine::Redb, d.path()).unwrap();
    publish(&m, &req("a", None, 8, &[(0, Some(1)), (5, Some(2))]));
    assert!(m.check().unwrap().is_empty());
    let damage = |f: &dyn Fn(&mut MetaTx) -> Result<()>| {
        m.write(|t| f(t)).unwrap();
        let problems = m.check().unwrap();
        assert!(!problems.is_empty());
        problems
    };
    let p = damage(&|t| Ok(t.tx.put(&key::chunk(&cid(1)), &codec::enc_u64(5))?));
    assert_eq!(p, vec!["1 chunk reference counts are wrong".to_string()]);
    m.write(|t| Ok(t.tx.put(&key::chunk(&cid(1)), &codec::enc_u64(1))?))
        .unwrap();
    assert!(m.check().unwrap().is_empty());
    let nodes = m.stats().unwrap().meta_nodes;
    assert_eq!(nodes, 5, "the paths to chunks 0 and 5 of 8");
    let p = damage(&|t| {
        t.c.nodes += 1;
        Ok(())
    });
    assert_eq!(p, vec!["counter nodes is 6, found 5".to_string()]);
}

/// On etcd with a small transaction limit (200 keys): big publishes go
/// in slices and make exactly one version each, an interrupted one leaves
/// a staging root that start-up drops, and a delete frees in batches.
#[test]
fn etcd_bounded_publish_recover_and_delete() {
    let etcd = testbed::harness::etcd::EtcdCluster::start(1);
    let mut o = crate::kv::etcd_engine::EtcdOptions::new(etcd.endpoints(), "/b/");
    o.max_txn_ops = 200;
    let d = tempfile::tempdir().unwrap();
    let m = Meta::new(crate::kv::open(Engine::Etcd, d.path(), Some(&o)).unwrap()).unwrap();
    let n = 3000u64;
    let all: Vec<_> = (0..n).map(|i| (i, Some(i as u32))).collect();
    assert_eq!(publish(&m, &req("big", None, n, &all)), 1);
    let changed: Vec<_> = (0..n)
        .step_by(3)
        .map(|i| (i, Some(10_000 + i as u32)))
        .collect();
    let second = with_id(req("big", Some(1), n, &changed), 7);
    assert_eq!(publish(&m, &second), 2);
    assert_eq!(publish(&m, &second), 2, "a resent sliced publish");
    assert_eq!(m.check().unwrap(), Vec::<String>::new());
    let v2 = resolve_all(&m, "big", 2);
    assert_eq!(v2[3], Some(cid(10_003)));
    assert_eq!(v2[4], Some(cid(4)));
    assert_eq!(resolve_all(&m, "big", 1)[3], Some(cid(3)));
    let s = m.stats().unwrap();
    assert_eq!(s.versions, 2);
    // A publish cut short after its first slice: its staging root holds
    // a reference (check is clean) until start-up drops it.
    m.write(|t| {
        let (_, rec) = find_version(t.r(), "big", 1, 0)?;
        blobvirt_core::tree::NodeStore::incref(t, rec.root)?;
        let seq = t.c.next_hold;
        t.c.next_hold += 1;
        let mut w = crate::codec::Writer::default();
        w.child(rec.root).u32(rec.depth);
        t.tx.put(&key::staging(seq), &w.0)?;
        Ok(())
    })
    .unwrap();
    assert_eq!(m.check().unwrap(), Vec::<String>::new());
    assert_eq!(m.recover().unwrap(), 1);
    assert_eq!(m.check().unwrap(), Vec::<String>::new());
    assert_eq!(m.stats().unwrap().meta_nodes, s.meta_nodes);
    // Deleting frees every node and chunk, in transactions under 200 keys.
    m.delete_volume("big", 0).unwrap();
    let s = m.stats().unwrap();
    assert_eq!((s.versions, s.meta_nodes, s.live_chunks), (0, 0, 0));
    assert_eq!(m.check().unwrap(), Vec::<String>::new());
}
