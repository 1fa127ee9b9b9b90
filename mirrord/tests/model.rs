//! Property test: random reads, writes, hole punches, fsyncs, commits and
//! reopens through the mount agree with a plain in-memory model, and every
//! committed version exports exactly the model at that point.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use testbed::harness::daemons::*;
use testbed::harness::data::*;

const SIZE: usize = 4 << 20;
const CS: usize = 64 * 1024;

#[derive(Clone, Debug)]
enum Op {
    Write { off: usize, len: usize, seed: u64 },
    Read { off: usize, len: usize },
    Punch { off: usize, len: usize },
    Fsync,
    Commit,
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    let span = (0..SIZE, 1..300_000usize).prop_map(|(o, l)| (o, l.min(SIZE - o)));
    prop_oneof![
        6 => (span.clone(), any::<u64>()).prop_map(|((off, len), seed)| Op::Write { off, len, seed }),
        3 => span.clone().prop_map(|(off, len)| Op::Read { off, len }),
        1 => span.prop_map(|(off, len)| Op::Punch { off, len }),
        1 => Just(Op::Fsync),
        2 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

fn open(p: &std::path::Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap()
}

#[test]
fn mount_agrees_with_in_memory_model() {
    let c = Cluster::start(2, 2);
    let m = Mirrord::start(&c.pool, c.dir.path());
    let mut runner = TestRunner::new(Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(8),
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicU64::new(0);
    runner
        .run(&proptest::collection::vec(op(), 1..30), |ops| {
            let case = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            let name = format!("model-{case}");
            let img = image(case, SIZE, CS);
            c.import(&name, &img, CS as u32);
            m.wait_for(&name);
            let path = m.path(&name);
            let mut model = img.clone();
            let mut f = open(&path);
            for op in &ops {
                match *op {
                    Op::Write { off, len, seed } => {
                        let d = random_bytes(seed, len);
                        f.write_all_at(&d, off as u64).unwrap();
                        model[off..off + len].copy_from_slice(&d);
                    }
                    Op::Read { off, len } => {
                        let mut b = vec![0u8; len];
                        f.read_exact_at(&mut b, off as u64).unwrap();
                        prop_assert!(b == model[off..off + len], "read {off}+{len} differs");
                    }
                    Op::Punch { off, len } => {
                        use nix::fcntl::FallocateFlags as F;
                        nix::fcntl::fallocate(
                            f.as_raw_fd(),
                            F::FALLOC_FL_PUNCH_HOLE | F::FALLOC_FL_KEEP_SIZE,
                            off as i64,
                            len as i64,
                        )
                        .unwrap();
                        model[off..off + len].fill(0);
                    }
                    Op::Fsync => f.sync_all().unwrap(),
                    Op::Commit => {
                        let v = mirrord::ioctl::commit(&f).unwrap();
                        prop_assert!(
                            c.export(&name, v) == model,
                            "version {v} differs from the model"
                        );
                    }
                    Op::Reopen => {
                        drop(f);
                        f = open(&path);
                        let mut all = vec![0u8; SIZE];
                        f.read_exact_at(&mut all, 0).unwrap();
                        prop_assert!(all == model, "content differs after reopening");
                    }
                }
            }
            let v =
                c.rt.block_on(m.client().commit(&name, true))
                    .unwrap()
                    .version;
            prop_assert!(
                c.export(&name, v) == model,
                "final version {v} differs from the model"
            );
            prop_assert!(c.export(&name, 1) == img, "version 1 changed");
            drop(f);
            Ok(())
        })
        .unwrap();
}
