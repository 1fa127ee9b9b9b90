//! Turns `results.jsonl` into Markdown tables (medians with min–max over
//! runs) with the physical lower bound from the link model and the
//! per-node model ([`super::model`]), and the data files of the plots
//! ([`super::plot`]). One set per experiment label and disk setting:
//! `tables-LABEL.md` (native disk) or `tables-LABEL-slowM.md`. Records
//! written before per-node accounting existed have no model; their cells
//! read "—".

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
            "disk_id": inp.disk.id(),
            "disk_title": inp.disk.title(),
            "disk_measured_bps": inp.disk.measured_bps,
            "disk_model_bps": inp.disk.model_bps,
            "slow_disk_bps": inp.disk.slow_bps,
            "model_cores": super::model::MODEL_CORES,
            "model_label": super::model::LABEL,
        })))
    }
    pub fn to_json(&self) -> Value {
        self.0.clone()
    }
}

const MIB: f64 = 1048576.0;

/// Key of a table row: (label, disk setting, system, nodes).
type Key = (String, String, String, u64);

fn load(results: &Path) -> Result<BTreeMap<Key, Vec<Value>>> {
    let text = std::fs::read_to_string(results)
        .with_context(|| format!("reading {}", results.display()))?;
    let mut m: BTreeMap<Key, Vec<Value>> = BTreeMap::new();
    for l in text.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(l).context("parsing a results line")?;
        let k = (
            v["label"].as_str().unwrap_or("").to_string(),
            v["disk"].as_str().unwrap_or("native").to_string(),
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

/// Which term of which node bounds the model in each run ("cpu (node)",
/// "link (srv)"), distinct ones joined.
fn bounds(rows: &[Value], phase: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for r in rows {
        let m = &r[phase]["model"];
        let (Some(b), Some(n)) = (m["bound"].as_str(), m["node"].as_str()) else {
            continue;
        };
        let b = format!("{b} ({})", if n == "srv" { "srv" } else { "node" });
        if !out.contains(&b) {
            out.push(b);
        }
    }
    if out.is_empty() {
        "—".into()
    } else {
        out.join(" / ")
    }
}

/// The per-node model's cells of a phase: model s, emulated ÷ model,
/// bound, max node CPU-s, max node disk MiB.
fn model_cells(rows: &[Value], phase: &str, emulated: &[f64]) -> String {
    let model = col(rows, &[phase, "model", "s"]);
    let ratio = if model.is_empty() {
        "—".into()
    } else {
        format!("{:.1}", median(emulated) / median(&model))
    };
    format!(
        "{} | {ratio} | {} | {} | {}",
        cell(&model, 1.0, 2),
        bounds(rows, phase),
        cell(&col(rows, &[phase, "model", "max_node_cpu_s"]), 1.0, 2),
        cell(&col(rows, &[phase, "model", "max_node_disk_bytes"]), MIB, 0),
    )
}

const MODEL_HEAD: &str =
    "per-node model s | ÷ model | model bound | max node CPU-s | max node disk MiB";

/// Writes OUT/tables-STEM.md, OUT/STEM-SYSTEM.dat and the plots, for
/// every label and disk setting (STEM is the label, plus `-slowM` for a
/// throttled disk).
pub fn write(results: &Path, out: &Path) -> Result<()> {
    let m = load(results)?;
    let groups: std::collections::BTreeSet<(&String, &String)> =
        m.keys().map(|k| (&k.0, &k.1)).collect();
    for (label, disk) in groups {
        let rows: Vec<(&Key, &Vec<Value>)> = m
            .iter()
            .filter(|(k, _)| &k.0 == label && &k.1 == disk)
            .collect();
        let stem = if disk == "native" {
            label.clone()
        } else {
            format!("{label}-{disk}")
        };
        let (md, dat) = tables(label, &rows)?;
        let md_path = out.join(format!("tables-{stem}.md"));
        std::fs::write(&md_path, &md)?;
        for (sys, text) in &dat {
            std::fs::write(out.join(format!("{stem}-{sys}.dat")), &text.0)?;
        }
        let systems = dat.iter().map(|(s, d)| (s.clone(), d.1)).collect();
        super::plot::plot(out, &stem, systems)?;
        println!("{md}");
        eprintln!("emu: wrote {}", md_path.display());
    }
    Ok(())
}

/// Per system: the plot's data file and whether it has model points.
type Dat = BTreeMap<String, (String, bool)>;

/// The Markdown of one label and disk setting, and its data files.
fn tables(label: &str, rows: &[(&Key, &Vec<Value>)]) -> Result<(String, Dat)> {
    let mut md = String::new();
    let meta = &rows[0].1[0]["meta"];
    let rate = meta["rate_bps"].as_f64().unwrap_or(1e9) / 8.0;
    let unique = meta["trace_unique_bytes"].as_f64().unwrap_or(0.0);
    let image = meta["image_bytes"].as_f64().unwrap_or(0.0);
    writeln!(
        md,
        "Experiment `{label}`: image {} ({:.0} MiB), trace {} ({} reads, {:.1} MiB unique = {:.1}% of the image), \
         links {:.0} Mbit/s, blobvirt replicas {}, snapshot writes {} MiB in {} KiB blocks; {}.\n",
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
        meta["disk_title"]
            .as_str()
            .unwrap_or("disk: native (recorded before per-node accounting)"),
    )?;
    writeln!(
        md,
        "Per-node model (\"{}\"): for every node (the server is one) max(its link bytes ÷ link rate, \
         its CPU-seconds incl. its share of the switch ÷ 2, its disk bytes ÷ disk bandwidth); \
         the phase's model time is the slowest node's (see bench/cluster/README.md).\n",
        super::model::LABEL
    )?;
    md.push_str("**Multideployment** (seconds and MiB; median (min–max) over runs)\n\n");
    writeln!(
        md,
        "| system | N | runs | completion s | mean per-instance s | max per-instance s | traffic MiB | stored MiB | node-local MiB | lower bound s | ÷ bound | CPU busy | disk busy | {MODEL_HEAD} |\n|{}",
        "---|".repeat(18)
    )?;
    let mut dat = Dat::new();
    for ((_, _, sys, n), rs) in rows {
        let completion = col(rs, &["deploy", "completion_s"]);
        let traffic = col(rs, &["deploy", "traffic_bytes"]);
        let bound = lower_bound(sys, *n as f64, image, unique, rate);
        let ratio = median(&completion) / bound;
        writeln!(
            md,
            "| {sys} | {n} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {:.1} | {} | {} | {} |",
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
            model_cells(rs, "deploy", &completion),
        )?;
        let snap = col(rs, &["snapshot", "mean_s"]);
        let model = col(rs, &["deploy", "model", "s"]);
        let snap_model = col(rs, &["snapshot", "model", "s"]);
        let e = dat.entry(sys.clone()).or_default();
        e.1 |= !model.is_empty();
        let _ = writeln!(
            e.0,
            "{n} {} {} {} {} {} {} {}",
            median(&completion),
            summarize(&completion).min,
            summarize(&completion).max,
            median(&traffic) / MIB,
            median(&snap),
            median(&model),
            median(&snap_model),
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
    md.push_str("\n**Multisnapshotting** (all instances at once; ÷ model is the max per-instance time over the model)\n\n");
    writeln!(
        md,
        "| system | N | runs | mean per-instance s | max per-instance s | written MiB | stored added MiB | stored ÷ written | per copy ÷ written | traffic MiB | CPU busy | disk busy | {MODEL_HEAD} |\n|{}",
        "---|".repeat(17)
    )?;
    for ((_, _, sys, n), rs) in rows {
        let mean_s = col(rs, &["snapshot", "mean_s"]);
        if mean_s.is_empty() {
            continue;
        }
        let max_s = col(rs, &["snapshot", "max_s"]);
        let written = col(rs, &["snapshot", "written_bytes"]);
        let added = col(rs, &["snapshot", "stored_added_bytes"]);
        writeln!(
            md,
            "| {sys} | {n} | {} | {} | {} | {} | {} | {:.2} | {:.2} | {} | {} | {} | {} |",
            rs.len(),
            cell(&mean_s, 1.0, 3),
            cell(&max_s, 1.0, 3),
            cell(&written, MIB, 0),
            cell(&added, MIB, 0),
            median(&added) / median(&written),
            median(&added) / median(&written) / copies(sys, *n),
            cell(&col(rs, &["snapshot", "traffic_bytes"]), MIB, 0),
            busy(&col(rs, &["snapshot", "cpu_busy"])),
            busy(&col(rs, &["snapshot", "disk_busy"])),
            model_cells(rs, "snapshot", &max_s),
        )?;
    }
    accounting(&mut md, rows)?;
    Ok((md, dat))
}

/// Where the machine's CPU time and disk bytes went in each phase (runs
/// with per-node accounting only).
fn accounting(md: &mut String, rows: &[(&Key, &Vec<Value>)]) -> Result<()> {
    let mut head = false;
    for ((_, _, sys, n), rs) in rows {
        for phase in ["deploy", "snapshot"] {
            let c = |k: &str| col(rs, &[phase, "model", k]);
            if c("s").is_empty() {
                continue;
            }
            if !head {
                md.push_str(
                    "\n**Where the machine's CPU and disk went** (medians; CPU-seconds, MiB; \
                     switch = machine − every process, shared evenly by the N + 1 nodes)\n\n\
                     | system | N | phase | machine CPU-s | node processes | harness | other processes | \
                     switch | of which kernel threads | switch per node | machine disk MiB | not charged to a node MiB |\n|",
                );
                md.push_str(&"---|".repeat(12));
                md.push('\n');
                head = true;
            }
            let f = |k: &str| format!("{:.2}", median(&c(k)));
            writeln!(
                md,
                "| {sys} | {n} | {phase} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} |",
                f("machine_cpu_s"),
                f("procs_cpu_s"),
                f("harness_cpu_s"),
                f("other_procs_cpu_s"),
                f("switch_cpu_s"),
                f("kthreads_cpu_s"),
                f("switch_share_s"),
                median(&c("machine_disk_bytes")) / MIB,
                median(&c("unattributed_disk_bytes")) / MIB,
            )?;
        }
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
