//! Boot prefetch: the first-read order is stored as the volume's profile
//! on close, and a later attach (here on a second node, and for a clone of
//! the image) prefetches exactly those chunks in the background.

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::time::{Duration, Instant};

use blobvirt_core::proto as pb;
use testbed::harness::daemons::*;
use testbed::harness::data::*;

const MIB: usize = 1 << 20;
const CS: usize = 256 * 1024;

#[test]
fn boot_profile_is_recorded_and_prefetched() {
    let c = Cluster::start(2, 2);
    let img = random_bytes(100, 16 * MIB);
    c.import("golden", &img, CS as u32);
    let a = Mirrord::start(&c.pool, &c.dir.path().join("a"));
    a.wait_for("golden");
    // "Boot": read chunks 9, 2, 2 again, 30, 5 in that order.
    let order = [9usize, 2, 2, 30, 5];
    {
        let f = std::fs::File::open(a.path("golden")).unwrap();
        let mut b = vec![0u8; 4096];
        for &i in &order {
            f.read_exact_at(&mut b, (i * CS + 100) as u64).unwrap();
        }
    }
    let want: Vec<u64> = vec![9, 2, 30, 5];
    let t = Instant::now();
    let stored = loop {
        let p =
            c.rt.block_on(c.repo.pool().get_profile(pb::GetProfileRequest {
                name: "golden".into(),
            }))
            .map(|r| r.into_inner().chunks)
            .unwrap_or_default();
        if !p.is_empty() || t.elapsed() > Duration::from_secs(10) {
            break p;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        stored, want,
        "the stored profile is not the first-read order"
    );

    // A second node attaches the image and its clone: both prefetch the profile.
    c.rt.block_on(c.repo.clone_blob("golden", 1, "vm-1"))
        .unwrap();
    let b = Mirrord::start(&c.pool, &c.dir.path().join("b"));
    for name in ["golden", "vm-1"] {
        c.rt.block_on(b.client().attach(name, None)).unwrap();
        let t = Instant::now();
        while b.status(&c.rt, name).prefetched < want.len() as u64 {
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "{name}: prefetch did not finish"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let st = b.status(&c.rt, name);
        assert_eq!(st.prefetched, 4);
        assert_eq!(
            st.fetches, 4,
            "{name}: prefetch fetched more than the profile"
        );
        assert_eq!(st.chunks_present, 4);
        // Reading the profiled chunks now costs no fetch.
        b.wait_for(name);
        // O_DIRECT so that kernel readahead does not fetch neighbours.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECT)
            .open(b.path(name))
            .unwrap();
        let mut buf = vec![0u8; CS];
        for &i in &want {
            f.read_exact_at(&mut buf, i * CS as u64).unwrap();
            assert!(buf == img[i as usize * CS..(i as usize + 1) * CS]);
        }
        assert_eq!(b.status(&c.rt, name).fetches, 4);
    }
}
