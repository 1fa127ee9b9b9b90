//! Turns `results.jsonl` into Markdown tables (medians with min–max over
//! runs), the physical lower bound from the link model, and PNG plots of
//! time and traffic against N drawn with gnuplot (when it is installed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::{Inputs, Opts};
use crate::stats::summarize;
use crate::workload::trace::{parse_trace, unique_bytes};

/// The fixed parameters of an experiment, stored with every record.
pub struct Meta(Value);

impl Meta {
    pub fn new(o: &Opts, inp: &Inputs) -> Result<Meta> {
        let text = std::fs::read_to_string(&inp.trace)
            .with_context(|| format!("reading trace {}", inp.trace.display()))?;
        let t = parse_trace(&text)?;
        let total: u64 = t.reads.iter().map(|r| r.1).sum();
        Ok(Meta(json!({
            "image": inp.image.file_name().map(|f| f.to_string_lossy().into_owned()),
            "image_bytes": inp.image_size,
            "trace": inp.trace.file_name().map(|f| f.to_string_lossy().into_owned()),
            "trace_reads": t.reads.len(),
            "trace_bytes": total,
            "trace_unique_bytes": unique_bytes(&t.reads),
            "rate_bps": o.rate_mbit * 1_000_000,
            "latency_ms": o.latency_ms,
            "replicas": o.replicas,
            "write_mib": o.write_mib,
            "write_block_kib": o.write_block_kib,
        })))
    }
    pub fn to_json(&self) -> Value {
        self.0.clone()
    }
}

const MIB: f64 = 1048576.0;

/// Key of a table row: (label, system, nodes).
type Key = (String, String, u64);

fn load(results: &Path) -> Result<BTreeMap<Key, Vec<Value>>> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let mut m: BTreeMap<Key, Vec<Value>> = BTreeMap::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).context("parsing a results line")?;
        let k = (
            v["label"].as_str().unwrap_or("").to_string(),
            v["system"].as_str().unwrap_or("").to_string(),
            v["nodes"].as_u64().unwrap_or(0),
        );
        m.entry(k).or_default().push(v);
    }
    Ok(m)
}

fn col(rows: &[Value], path: &[&str]) -> Vec<f64> {
    rows.iter()
        .filter_map(|r| {
            let mut x = r;
            for p in path {
                x = &x[*p];
            }
            x.as_f64()
        })
        .collect()
}

/// "median (min–max)" with a scale and precision.
fn cell(xs: &[f64], scale: f64, prec: usize) -> String {
    if xs.is_empty() {
        return "—".into();
    }
    let s = summarize(xs);
    format!(
        "{:.p$} ({:.p$}–{:.p$})",
        s.median / scale,
        s.min / scale,
        s.max / scale,
        p = prec
    )
}

/// Median share of the machine's CPUs (or of the disk's time) busy during
/// the phase.
fn busy(xs: &[f64]) -> String {
    if xs.is_empty() {
        "—".into()
    } else {
        format!("{:.0}%", 100.0 * median(xs))
    }
}

fn median(xs: &[f64]) -> f64 {
    if xs.is_empty() {
        f64::NAN
    } else {
        summarize(xs).median
    }
}

/// Writes OUT/tables-LABEL.md, OUT/LABEL-SYSTEM.dat and the plots.
pub fn write(results: &Path, out: &Path) -> Result<()> {
    let m = load(results)?;
    let labels: std::collections::BTreeSet<&String> = m.keys().map(|k| &k.0).collect();
    for label in labels {
        let mut md = String::new();
        let rows: Vec<(&Key, &Vec<Value>)> = m.iter().filter(|(k, _)| &k.0 == label).collect();
        let meta = &rows[0].1[0]["meta"];
        let rate = meta["rate_bps"].as_f64().unwrap_or(1e9) / 8.0;
        let unique = meta["trace_unique_bytes"].as_f64().unwrap_or(0.0);
        let image = meta["image_bytes"].as_f64().unwrap_or(0.0);
        writeln!(
            md,
            "Experiment `{label}`: image {} ({:.0} MiB), trace {} ({} reads, {:.1} MiB unique = {:.1}% of the image), \
             links {:.0} Mbit/s, blobvirt replicas {}, snapshot writes {} MiB in {} KiB blocks.\n",
            meta["image"].as_str().unwrap_or("?"),
            image / MIB,
            meta["trace"].as_str().unwrap_or("?"),
            meta["trace_reads"],
            unique / MIB,
            100.0 * unique / image.max(1.0),
            rate * 8.0 / 1e6,
            meta["replicas"],
            meta["write_mib"],
            meta["write_block_kib"],
        )?;
        md.push_str("**Multideployment** (seconds and MiB; median (min–max) over runs)\n\n");
        md.push_str("| system | N | runs | completion s | mean per-instance s | max per-instance s | traffic MiB | stored MiB | node-local MiB | lower bound s | ÷ bound | CPU busy | disk busy |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        let mut dat: BTreeMap<String, String> = BTreeMap::new();
        for ((_, sys, n), rs) in &rows {
            let completion = col(rs, &["deploy", "completion_s"]);
            let traffic = col(rs, &["deploy", "traffic_bytes"]);
            let bound = lower_bound(sys, *n as f64, image, unique, rate);
            let ratio = median(&completion) / bound;
            writeln!(
                md,
                "| {sys} | {n} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {} |",
                rs.len(),
                cell(&completion, 1.0, 2),
                cell(&col(rs, &["deploy", "mean_s"]), 1.0, 2),
                cell(&col(rs, &["deploy", "max_s"]), 1.0, 2),
                cell(&traffic, MIB, 0),
                cell(&col(rs, &["deploy", "stored_bytes"]), MIB, 0),
                cell(&col(rs, &["deploy", "local_bytes"]), MIB, 0),
                bound,
                ratio,
                busy(&col(rs, &["deploy", "cpu_busy"])),
                busy(&col(rs, &["deploy", "disk_busy"])),
            )?;
            let snap = col(rs, &["snapshot", "mean_s"]);
            let _ = writeln!(
                dat.entry(sys.clone()).or_default(),
                "{n} {} {} {} {} {}",
                median(&completion),
                summarize(&completion).min,
                summarize(&completion).max,
                median(&traffic) / MIB,
                if snap.is_empty() {
                    f64::NAN
                } else {
                    median(&snap)
                },
            );
        }
        let replicas = meta["replicas"].as_f64().unwrap_or(1.0);
        // blobvirt keeps min(replicas, N) copies of every chunk.
        let copies = |sys: &str, n: u64| {
            if sys == "blobvirt" {
                replicas.min(n as f64)
            } else {
                1.0
            }
        };
        md.push_str("\n**Multisnapshotting** (all instances at once)\n\n");
        md.push_str("| system | N | runs | mean per-instance s | max per-instance s | written MiB | stored added MiB | stored ÷ written | per copy ÷ written | traffic MiB | CPU busy | disk busy |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n");
        for ((_, sys, n), rs) in &rows {
            let mean_s = col(rs, &["snapshot", "mean_s"]);
            if mean_s.is_empty() {
                continue;
            }
            let written = col(rs, &["snapshot", "written_bytes"]);
            let added = col(rs, &["snapshot", "stored_added_bytes"]);
            writeln!(
                md,
                "| {sys} | {n} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} |",
                rs.len(),
                cell(&mean_s, 1.0, 3),
                cell(&col(rs, &["snapshot", "max_s"]), 1.0, 3),
                cell(&written, MIB, 0),
                cell(&added, MIB, 0),
                median(&added) / median(&written),
                median(&added) / median(&written) / copies(sys, *n),
                cell(&col(rs, &["snapshot", "traffic_bytes"]), MIB, 0),
                busy(&col(rs, &["snapshot", "cpu_busy"])),
                busy(&col(rs, &["snapshot", "disk_busy"])),
            )?;
        }
        let md_path = out.join(format!("tables-{label}.md"));
        std::fs::write(&md_path, &md)?;
        for (sys, text) in &dat {
            std::fs::write(out.join(format!("{label}-{sys}.dat")), text)?;
        }
        plot(out, label, dat.keys().cloned().collect())?;
        println!("{md}");
        eprintln!("emu: wrote {}", md_path.display());
    }
    Ok(())
}

/// The physical lower bound of a deployment from the link model: the
/// bytes each node must receive over its own link, and the bytes that must
/// leave the links that hold the data (all N for blobvirt's stripes, the
/// server's one link for HTTP and NBD; a chain needs only one full copy on
/// every link).
pub fn lower_bound(sys: &str, n: f64, image: f64, unique: f64, rate: f64) -> f64 {
    match sys {
        "blobvirt" => (unique / rate).max(n * unique / (n * rate)),
        "prepro-http" => n * image / rate,
        "prepro-chain" => image / rate,
        _ => n * unique / rate,
    }
}

/// Draws LABEL-time.png, LABEL-traffic.png and LABEL-snapshot.png.
fn plot(out: &Path, label: &str, systems: Vec<String>) -> Result<()> {
    if std::process::Command::new("gnuplot")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("emu: gnuplot is not installed; no plots (apt-get install gnuplot-nox)");
        return Ok(());
    }
    let series = |colno: usize, only: &dyn Fn(&str) -> bool| {
        systems
            .iter()
            .filter(|s| only(s))
            .map(|s| format!("'{label}-{s}.dat' using 1:{colno} with linespoints lw 2 title '{s}'"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let all = |_: &str| true;
    let snap = |s: &str| s == "blobvirt" || s == "qcow2-nbd";
    let script = format!(
        "set terminal pngcairo size 800,500 noenhanced\n\
         set key top left\nset grid\nset xlabel 'instances (N)'\n\
         set output '{label}-time.png'\nset title 'Multideployment ({label}): time until the last instance booted'\n\
         set ylabel 'seconds'\nset logscale y\nplot {}\n\
         set output '{label}-traffic.png'\nset title 'Multideployment ({label}): bytes sent over all links'\n\
         set ylabel 'MiB'\nplot {}\n\
         unset logscale y\n\
         set output '{label}-snapshot.png'\nset title 'Multisnapshotting ({label}): mean per-instance snapshot time'\n\
         set ylabel 'seconds'\nplot {}\n",
        series(2, &all),
        series(5, &all),
        series(6, &snap),
    );
    let gp = out.join(format!("{label}.gp"));
    std::fs::write(&gp, &script)?;
    let st = std::process::Command::new("gnuplot")
        .current_dir(out)
        .arg(format!("{label}.gp"))
        .status()
        .context("running gnuplot")?;
    if !st.success() {
        eprintln!("emu: gnuplot failed ({st}); tables are still written");
    }
    Ok(())
}
