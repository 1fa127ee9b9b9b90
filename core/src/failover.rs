//! A channel to poold over a list of endpoints (`[cluster] pool =
//! "https://a:7000,https://b:7000"`, or `--pool` with commas): only the
//! active poold listens (a standby waits in etcd's election without a
//! socket), so a request goes to the endpoint that answered last, and one
//! that could not be sent there (the connection was refused) goes to the
//! next, in turn, for up to [`FAILOVER_WAIT`] (so does one that was still
//! queued on a connection that closed before writing it). A fail-over of the active
//! poold is then a slower call for every client, chunkd and mirrord, not
//! an error. A request that was sent and then lost its connection is not
//! sent again (it may have been applied): its caller sees the error;
//! unless applying it twice is applying it once: reads, heartbeats, leases
//! (per holder), labels, profiles ([`RESENDABLE`]), and requests marked
//! [`idempotent`] (a publish, revert or clone with a request id, which
//! poold answers with what its first try made). Those are resent after any
//! transport failure, also one that broke off their answer (their answers
//! are read whole before they are handed on). Delete and rename are not.
//!
//! With a single endpoint this is a plain channel with no waiting.

use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use tonic::body::Body;
use tonic::transport::Channel;
use tower_service::Service;

/// Pool methods whose second application changes nothing more than the
/// first, so a request that was sent and lost its answer is sent again.
pub const RESENDABLE: &[&str] = &[
    "Register",
    "Heartbeat",
    "Nodes",
    "DrainNode",
    "Repair",
    "GetBlob",
    "ListBlobs",
    "Resolve",
    "LabelVersion",
    "AcquireLease",
    "RenewLease",
    "ReleaseLease",
    "PutProfile",
    "GetProfile",
    "Stats",
    "Gc",
];

/// True when the request for `path` (`/blobvirt.v1.Pool/Method`) with
/// `headers` may be sent again after it was sent.
fn resendable(path: &str, headers: &http::HeaderMap) -> bool {
    headers.contains_key(IDEMPOTENT)
        || path
            .rsplit_once('/')
            .is_some_and(|(_, m)| RESENDABLE.contains(&m))
}

/// The header that marks a request as safe to resend after it was sent.
pub const IDEMPOTENT: &str = "x-blobvirt-idempotent";

/// `msg` as a request marked safe to resend (see the module docs).
pub fn idempotent<T>(msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert(IDEMPOTENT, tonic::metadata::MetadataValue::from_static("1"));
    r
}

/// A fresh 16-byte request id (random).
pub fn request_id() -> Bytes {
    Bytes::copy_from_slice(&rand::random::<[u8; 16]>())
}

/// How long a request keeps looking for a listening poold.
pub const FAILOVER_WAIT: Duration = Duration::from_secs(30);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Channels to every poold endpoint; cheap to clone.
#[derive(Clone)]
pub struct PoolChannel {
    chans: Arc<[Channel]>,
    current: Arc<AtomicUsize>,
}

impl PoolChannel {
    /// Over `chans` (at least one), starting with the first.
    pub fn new(chans: Vec<Channel>) -> Self {
        assert!(!chans.is_empty(), "a pool channel needs an endpoint");
        PoolChannel {
            chans: chans.into(),
            current: Arc::default(),
        }
    }
}

/// True when `e` says the request never reached a server (nothing listens
/// there, or the connection it was queued on closed before it was
/// written), so sending it elsewhere cannot apply it twice.
fn not_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        // hyper cancels the requests still queued on a connection that
        // closed (the active poold just died); they were not written.
        if e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotConnected
            ) {
                return true;
            }
        }
        if e.to_string().contains("tcp connect error") {
            return true;
        }
        cur = e.source();
    }
    false
}

/// `resp` with its whole body read (Pool answers are single messages), so
/// a connection that breaks in the middle of it is an error here, where
/// the request can still be sent again.
async fn buffered(resp: http::Response<Body>) -> Result<http::Response<Body>, BoxError> {
    use http_body::Frame;
    let (parts, body) = resp.into_parts();
    let got = body.collect().await?;
    let trailers = got.trailers().cloned();
    let mut frames = vec![Ok::<_, BoxError>(Frame::data(got.to_bytes()))];
    frames.extend(trailers.map(|t| Ok(Frame::trailers(t))));
    let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
    Ok(http::Response::from_parts(parts, Body::new(body)))
}

impl Service<http::Request<Body>> for PoolChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // Each call waits for the channel it picks.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let (chans, current) = (self.chans.clone(), self.current.clone());
        Box::pin(async move {
            if chans.len() == 1 {
                let mut ch = chans[0].clone();
                poll_fn(|cx| ch.poll_ready(cx)).await?;
                return Ok(ch.call(req).await?);
            }
            let (parts, body) = req.into_parts();
            let resend = resendable(parts.uri.path(), &parts.headers);
            let bytes: Bytes = body.collect().await?.to_bytes();
            let deadline = Instant::now() + FAILOVER_WAIT;
            loop {
                let first = current.load(Ordering::Relaxed);
                let mut last = None;
                for k in 0..chans.len() {
                    let i = (first + k) % chans.len();
                    let mut ch = chans[i].clone();
                    let mut r = http::Request::new(Body::new(Full::new(bytes.clone())));
                    *r.method_mut() = parts.method.clone();
                    *r.uri_mut() = parts.uri.clone();
                    *r.version_mut() = parts.version;
                    *r.headers_mut() = parts.headers.clone();
                    let sent = async {
                        poll_fn(|cx| ch.poll_ready(cx)).await?;
                        ch.call(r).await
                    };
                    match sent.await {
                        Ok(resp) if resend => match buffered(resp).await {
                            Ok(resp) => {
                                current.store(i, Ordering::Relaxed);
                                return Ok(resp);
                            }
                            // The answer broke off (poold died while it
                            // was sending it): send the request again.
                            Err(e) => last = Some(e),
                        },
                        Ok(resp) => {
                            current.store(i, Ordering::Relaxed);
                            return Ok(resp);
                        }
                        Err(e) if resend || not_sent(&e) => last = Some(e.into()),
                        Err(e) => return Err(e.into()),
                    }
                }
                if Instant::now() >= deadline {
                    return Err(last.unwrap_or_else(|| "no poold endpoint".into()));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_resent() {
        let none = http::HeaderMap::new();
        assert!(resendable("/blobvirt.v1.Pool/Resolve", &none));
        assert!(resendable("/blobvirt.v1.Pool/RenewLease", &none));
        for m in [
            "Publish",
            "CloneVolume",
            "DeleteVolume",
            "RevertVolume",
            "RenameVolume",
        ] {
            assert!(!resendable(&format!("/blobvirt.v1.Pool/{m}"), &none), "{m}");
        }
        let r = idempotent(());
        let marked = r.metadata().clone().into_headers();
        assert!(resendable("/blobvirt.v1.Pool/Publish", &marked));
    }
}
