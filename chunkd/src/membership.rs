//! Membership in the pool: register with poold (retrying every 500 ms while
//! it is unreachable), then heartbeat at the interval poold asked for, and
//! register again when poold forgets this node or a heartbeat fails.
//! Never gives up: chunkd keeps serving chunks while poold is down.

use std::time::Duration;

use blobvirt_core::client::pool_client;
use blobvirt_core::proto::{HeartbeatRequest, RegisterRequest};

/// Delay between Register attempts while poold is unreachable.
pub const RETRY: Duration = Duration::from_millis(500);
/// Heartbeat interval when poold does not say.
pub const DEFAULT_HEARTBEAT_MS: u32 = 1000;
/// Longest wait for one answer from poold.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Registers node `id` at `addr` with the poold behind `pool`, then
/// heartbeats forever. Run it as a background task and abort it on shutdown.
pub async fn maintain(
    pool: blobvirt_core::client::PoolChannel,
    pool_url: String,
    id: String,
    addr: String,
) {
    let mut client = pool_client(pool);
    loop {
        // Register, retrying while poold is unreachable.
        let mut attempts = 0u64;
        let heartbeat_ms = loop {
            let req = RegisterRequest {
                id: id.clone(),
                addr: addr.clone(),
            };
            match tokio::time::timeout(CALL_TIMEOUT, client.register(req)).await {
                Ok(Ok(r)) => break r.into_inner().heartbeat_ms,
                Ok(Err(s)) => log_retry(attempts, &pool_url, s.message()),
                Err(_) => log_retry(attempts, &pool_url, "no answer within 5 s"),
            }
            attempts += 1;
            tokio::time::sleep(RETRY).await;
        };
        let every = Duration::from_millis(match heartbeat_ms {
            0 => DEFAULT_HEARTBEAT_MS,
            ms => ms,
        } as u64);
        tracing::info!(node = %id, %addr, pool = %pool_url, heartbeat_ms = every.as_millis() as u64,
            "registered with poold");
        // Heartbeat until poold forgets us or stops answering.
        loop {
            tokio::time::sleep(every).await;
            let req = HeartbeatRequest { id: id.clone() };
            match tokio::time::timeout(CALL_TIMEOUT, client.heartbeat(req)).await {
                Ok(Ok(r)) if r.get_ref().known => continue,
                Ok(Ok(_)) => {
                    tracing::info!(node = %id, "poold does not know this node (any more); registering again");
                }
                Ok(Err(s)) => {
                    tracing::warn!(node = %id, pool = %pool_url, "heartbeat failed: {}; registering again", s.message());
                }
                Err(_) => {
                    tracing::warn!(node = %id, pool = %pool_url, "heartbeat got no answer within 5 s; registering again");
                }
            }
            break;
        }
    }
}

/// Logs a failed Register: the first failure and then every 20th (10 s) at
/// warn level, the rest at debug, so a long poold outage does not flood logs.
fn log_retry(attempts: u64, url: &str, why: &str) {
    if attempts.is_multiple_of(20) {
        tracing::warn!(pool = %url, "cannot register with poold: {why}; retrying every 500 ms");
    } else {
        tracing::debug!(pool = %url, "cannot register with poold: {why}");
    }
}
