//! `instance`: one emulated VM instance. Driven by command lines on stdin
//! (`go`, `write`, `exit`), reporting JSON lines on stdout: it optionally runs
//! a prepare command (e.g. a clone or a mount), replays a read trace against
//! the file with several threads, then writes scattered blocks and fsyncs,
//! keeping the file open until told to exit.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use serde_json::json;

use super::trace::parse_trace;
use super::{emit, mix, now_ns, MIB};

const PROTOCOL: &str = "Protocol (JSON lines on stdout, command lines on stdin):
  1. prints {\"event\":\"ready\"} and waits for `go`
  2. runs --prepare, replays the trace, prints {\"event\":\"deployed\",\"start_ns\",\"prepared_ns\",\"done_ns\",\"bytes_read\",\"reads\"}
  3. if --write-mib > 0: waits for `write`, writes, fsyncs, prints {\"event\":\"written\",\"bytes\",\"secs\"}
  4. waits for `exit` (or EOF) with the file still open, exits 0
`exit` or EOF at any wait ends the instance with exit 0; failures print {\"event\":\"error\",\"msg\"} and exit 1.";

/// Run one emulated VM instance: prepare, replay a boot trace, write.
#[derive(clap::Args, Debug)]
#[command(after_help = PROTOCOL)]
pub struct Opts {
    /// Disk file of this instance: read by the trace, then written.
    #[arg(long)]
    pub file: PathBuf,
    /// Read trace to replay (`OFFSET LENGTH` lines).
    #[arg(long)]
    pub trace: PathBuf,
    /// Replay threads sharing one cursor into the trace.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Shell command run with `sh -c` after `go`, before the replay.
    #[arg(long)]
    pub prepare: Option<String>,
    /// MiB written after the `write` command (0: no write phase).
    #[arg(long, default_value_t = 15)]
    pub write_mib: u64,
    /// Size of each written block in KiB; blocks are aligned and distinct.
    #[arg(long, default_value_t = 256)]
    pub write_block_kib: u64,
    /// Seed of the written offsets and data.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

pub fn run(o: Opts) -> Result<()> {
    session(&o).inspect_err(|e| {
        let _ = emit(&json!({"event": "error", "msg": format!("{e:#}")}));
    })
}

fn session(o: &Opts) -> Result<()> {
    if o.concurrency == 0 || o.write_block_kib == 0 {
        bail!("--concurrency and --write-block-kib must be at least 1; fix the flags");
    }
    let text = std::fs::read_to_string(&o.trace)
        .with_context(|| format!("reading trace {}", o.trace.display()))?;
    let trace = parse_trace(&text).with_context(|| format!("trace {}", o.trace.display()))?;
    let mut stdin = std::io::stdin().lock();
    emit(&json!({"event": "ready"}))?;
    if !wait_for(&mut stdin, "go")? {
        return Ok(());
    }
    let start_ns = now_ns();
    if let Some(cmd) = &o.prepare {
        let status = Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .stdout(std::io::stderr())
            .status()
            .with_context(|| format!("starting prepare command {cmd:?}"))?;
        if !status.success() {
            bail!("prepare command {cmd:?} failed ({status}); see its output on stderr");
        }
    }
    let prepared_ns = now_ns();
    let file = File::open(&o.file).with_context(|| format!("opening {}", o.file.display()))?;
    let len = file.metadata()?.len();
    if let Some(size) = trace.image_size.filter(|&s| s != len) {
        eprintln!(
            "note: trace {} was made for {size} bytes, {} has {len}",
            o.trace.display(),
            o.file.display()
        );
    }
    replay(&file, &o.file, &trace.reads, o.concurrency)?;
    let done_ns = now_ns();
    drop(file);
    emit(&json!({
        "event": "deployed",
        "start_ns": start_ns,
        "prepared_ns": prepared_ns,
        "done_ns": done_ns,
        "bytes_read": trace.total_bytes(),
        "reads": trace.reads.len(),
    }))?;
    let mut _kept = None;
    if o.write_mib > 0 {
        if !wait_for(&mut stdin, "write")? {
            return Ok(());
        }
        let t0 = Instant::now();
        let (file, bytes) = write(&o.file, o.write_mib, o.write_block_kib, o.seed)?;
        let secs = t0.elapsed().as_secs_f64();
        _kept = Some(file);
        emit(&json!({"event": "written", "bytes": bytes, "secs": secs}))?;
    }
    wait_for(&mut stdin, "exit")?;
    Ok(())
}

/// Reads stdin lines until `expected` (true) or `exit`/EOF (false); any
/// other non-empty line is an error.
fn wait_for(stdin: &mut impl BufRead, expected: &str) -> Result<bool> {
    let mut line = String::new();
    loop {
        line.clear();
        if stdin.read_line(&mut line).context("reading stdin")? == 0 {
            return Ok(false);
        }
        match line.trim() {
            "" => continue,
            t if t == expected => return Ok(true),
            "exit" => return Ok(false),
            t => bail!("instance got {t:?} on stdin while waiting for {expected:?}; send {expected} or exit"),
        }
    }
}

/// Replays `reads` with `concurrency` threads taking the next read from one
/// shared counter; the first failure stops all threads.
fn replay(file: &File, path: &Path, reads: &[(u64, u64)], concurrency: usize) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let max_len = reads.iter().map(|r| r.1).max().unwrap_or(0) as usize;
    let worker = || -> Result<()> {
        let mut buf = vec![0u8; max_len];
        while !failed.load(Relaxed) {
            let Some(&(off, len)) = reads.get(next.fetch_add(1, Relaxed)) else {
                break;
            };
            if let Err(e) = file.read_exact_at(&mut buf[..len as usize], off) {
                failed.store(true, Relaxed);
                return Err(if e.kind() == ErrorKind::UnexpectedEof {
                    anyhow!(
                        "short read of {} at offset {off} length {len}; the file ends first, check the trace matches it",
                        path.display()
                    )
                } else {
                    anyhow!(
                        "reading {} at offset {off} length {len}: {e}",
                        path.display()
                    )
                });
            }
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrency).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("replay thread panicked"))
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

/// Writes `write_mib` MiB of seeded data in blocks at distinct, aligned,
/// seeded offsets, fsyncs, and returns the still-open file and bytes written.
fn write(path: &Path, write_mib: u64, block_kib: u64, seed: u64) -> Result<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {} for writing", path.display()))?;
    let block = block_kib * 1024;
    let blocks = file.metadata()?.len() / block;
    let n = (write_mib * MIB).div_ceil(block);
    if n > blocks {
        bail!(
            "{} has {blocks} blocks of {block_kib} KiB, fewer than the {n} that --write-mib {write_mib} needs; pass a smaller --write-mib",
            path.display()
        );
    }
    let mut rng = StdRng::seed_from_u64(mix(seed, 0x0077_7269_7465));
    let picks = rand::seq::index::sample(&mut rng, blocks as usize, n as usize);
    let mut buf = vec![0u8; block as usize];
    for i in picks.iter() {
        rng.fill_bytes(&mut buf);
        file.write_all_at(&buf, i as u64 * block).with_context(|| {
            format!("writing {} at offset {}", path.display(), i as u64 * block)
        })?;
    }
    file.sync_all()
        .with_context(|| format!("syncing {}", path.display()))?;
    Ok((file, n * block))
}
