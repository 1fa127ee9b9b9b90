//! PNG plots against N, drawn with gnuplot (when it is installed) from the
//! `STEM-SYSTEM.dat` files [`super::report`] writes: deployment time,
//! link bytes, snapshot time. Time and snapshot plots carry, for every
//! system with accounted nodes, the per-node model as a second, dashed
//! series of the same colour labelled "model: own 2 cores + own disk per
//! node".
//!
//! Columns of a `.dat` file: N, completion median, min, max, traffic MiB,
//! snapshot mean, deployment model, snapshot model (seconds; NaN where a
//! value is missing).

use std::path::Path;

use anyhow::{Context, Result};

use super::model::LABEL;

/// Draws STEM-time.png, STEM-traffic.png and STEM-snapshot.png; `systems`
/// are (name, has model points).
pub fn plot(out: &Path, stem: &str, systems: Vec<(String, bool)>) -> Result<()> {
    if std::process::Command::new("gnuplot")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("emu: gnuplot is not installed; no plots (apt-get install gnuplot-nox)");
        return Ok(());
    }
    let script = script(stem, &systems);
    let gp = out.join(format!("{stem}.gp"));
    std::fs::write(&gp, &script)?;
    let st = std::process::Command::new("gnuplot")
        .current_dir(out)
        .arg(format!("{stem}.gp"))
        .status()
        .context("running gnuplot")?;
    if !st.success() {
        eprintln!("emu: gnuplot failed ({st}); tables are still written");
    }
    Ok(())
}

/// The gnuplot script of one stem.
fn script(stem: &str, systems: &[(String, bool)]) -> String {
    // Column `colno` of every system `only` admits, and with `model`, the
    // model column of those that have one, dashed in the same colour.
    let series = |colno: usize, model: Option<usize>, only: &dyn Fn(&str) -> bool| {
        let mut v = Vec::new();
        for (k, (s, has_model)) in systems.iter().enumerate() {
            if !only(s) {
                continue;
            }
            let lc = k + 1;
            v.push(format!(
                "'{stem}-{s}.dat' using 1:{colno} with linespoints lw 2 lc {lc} title '{s}'"
            ));
            if let (Some(m), true) = (model, *has_model) {
                v.push(format!(
                    "'{stem}-{s}.dat' using 1:{m} with linespoints lw 1 dt 2 lc {lc} title '{s}, {LABEL}'"
                ));
            }
        }
        v.join(", ")
    };
    let all = |_: &str| true;
    let snap = |s: &str| s == "blobvirt" || s == "qcow2-nbd";
    format!(
        "set terminal pngcairo size 900,560 noenhanced\n\
         set key top left\nset grid\nset xlabel 'instances (N)'\n\
         set output '{stem}-time.png'\nset title 'Multideployment ({stem}): time until the last instance booted'\n\
         set ylabel 'seconds'\nset logscale y\nplot {}\n\
         set output '{stem}-traffic.png'\nset title 'Multideployment ({stem}): bytes sent over all links'\n\
         set ylabel 'MiB'\nplot {}\n\
         unset logscale y\n\
         set output '{stem}-snapshot.png'\nset title 'Multisnapshotting ({stem}): mean per-instance snapshot time (model: last node)'\n\
         set ylabel 'seconds'\nplot {}\n",
        series(2, Some(7), &all),
        series(5, None, &all),
        series(6, Some(8), &snap),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_series_only_where_there_is_a_model() {
        let s = script(
            "b",
            &[("blobvirt".into(), true), ("prepro-http".into(), false)],
        );
        let time = s.lines().find(|l| l.starts_with("plot ")).unwrap();
        assert!(time.contains("'b-blobvirt.dat' using 1:7"), "{time}");
        assert!(time.contains(LABEL));
        assert!(!time.contains("'b-prepro-http.dat' using 1:7"));
        // Traffic has no model; the snapshot plot has blobvirt's.
        assert!(!s.contains("using 1:5 with linespoints lw 1 dt 2"));
        assert!(s.contains("'b-blobvirt.dat' using 1:8"));
    }
}
