//! A loopback TCP proxy that slows one chunkd: bytes from the chunkd to its
//! clients pass a token bucket shared by all connections (client to chunkd
//! is not limited). The chunkd is then registered to poold under the
//! proxy's address, so only traffic to that node is slowed.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// Bytes per second; 0 is unlimited.
struct Limiter {
    rate: AtomicU64,
    next: Mutex<Instant>,
    passed: AtomicU64,
}

impl Limiter {
    /// Waits until `n` more bytes may pass.
    async fn take(&self, n: usize) {
        self.passed.fetch_add(n as u64, Ordering::Relaxed);
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 {
            return;
        }
        // A virtual clock with at most 20 ms of credit: late timer wake-ups
        // are made up for, idle time is not saved up beyond a small burst.
        let until = {
            let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let start = (*next).max(now - Duration::from_millis(20));
            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
            *next
        };
        if until > Instant::now() {
            tokio::time::sleep_until(until).await;
        }
    }
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    pub addr: String,
    limiter: Arc<Limiter>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Listens on 127.0.0.1 (ephemeral port) and forwards to `target`.
    pub async fn start(target: &str, rate: u64) -> Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr()?.to_string();
        let limiter = Arc::new(Limiter {
            rate: AtomicU64::new(rate),
            next: Mutex::new(Instant::now()),
            passed: AtomicU64::new(0),
        });
        let (l, target) = (limiter.clone(), target.to_string());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (l, target) = (l.clone(), target.clone());
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(&target).await {
                        let _ = client.set_nodelay(true);
                        let _ = server.set_nodelay(true);
                        pipe(client, server, l).await;
                    }
                });
            }
        });
        Ok(Proxy {
            addr,
            limiter,
            task,
        })
    }

    /// Bytes sent from the chunkd to clients so far.
    pub fn passed(&self) -> u64 {
        self.limiter.passed.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(client: TcpStream, server: TcpStream, l: Arc<Limiter>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up = async move {
        let _ = tokio::io::copy(&mut cr, &mut sw).await;
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    l.take(n).await;
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}
