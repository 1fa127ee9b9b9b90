//! Boot profiles: the first-read order since attach is stored with
//! `PutProfile`; on attach the volume's (or its origin's) profile is
//! prefetched in the background, behind on-demand reads.

use std::sync::Arc;

use blobvirt_core::proto as pb;

use super::Volumes;
use crate::mirror::{lock, Mirror};

impl Volumes {
    /// Stores the first-read order recorded since attach as the volume's
    /// boot profile.
    pub async fn save_profile(&self, m: &Mirror) {
        if let Some(chunks) = m.take_profile() {
            let p = pb::Profile {
                name: m.name(),
                chunks,
            };
            if let Err(s) = self.repo.pool().put_profile(p).await {
                tracing::warn!(volume = %m.name(), "cannot store the boot profile: {}", s.message());
            }
        }
    }

    async fn get_profile(&self, name: &str) -> Vec<u64> {
        let req = pb::GetProfileRequest { name: name.into() };
        match self.repo.pool().get_profile(req).await {
            Ok(p) => p.into_inner().chunks,
            Err(_) => Vec::new(),
        }
    }

    /// Fetches the volume's boot profile (or its origin's) in the
    /// background, behind on-demand reads; with `all`, then every other
    /// chunk. Returns how many chunks were queued.
    pub async fn prefetch(&self, m: &Arc<Mirror>, all: bool) -> usize {
        let name = m.name();
        let mut order = self.get_profile(&name).await;
        if order.is_empty() {
            if let Ok(b) = self.repo.get_blob(&name).await {
                if let Ok((origin, _)) = blobvirt_core::parse_spec(&b.origin) {
                    if !origin.is_empty() {
                        order = self.get_profile(&origin).await;
                    }
                }
            }
        }
        let n = lock(&m.inner).st.len() as u64;
        order.retain(|&i| i < n);
        if all {
            let mut seen = vec![false; n as usize];
            order.iter().for_each(|&i| seen[i as usize] = true);
            order.extend((0..n).filter(|&i| !seen[i as usize]));
        }
        let queued = order.len();
        let m = m.clone();
        tokio::spawn(async move {
            use futures::stream::{self, StreamExt};
            stream::iter(order)
                .for_each_concurrent(4, |i| {
                    let m = m.clone();
                    async move {
                        m.yield_to_demand().await;
                        let _ = m.ensure(i, true).await;
                    }
                })
                .await;
        });
        queued
    }
}
