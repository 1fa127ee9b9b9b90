//! Prometheus metrics shared by every daemon: the registry type, the HTTP
//! server of `/metrics`, and a tower layer that counts and times gRPC calls.
//!
//! Each daemon builds one [`Registry`], registers its own families (its
//! `metrics.rs` module) and [`RpcMetrics`] when it serves gRPC, and calls
//! [`serve`] with the address of `--metrics` (`[poold|chunkd|mirrord]
//! metrics` in the configuration file). The text is the Prometheus
//! exposition format 0.0.4 (`text/plain; version=0.0.4`), encoded by
//! `prometheus-client`; the endpoint is plain HTTP/1.1 on its own address,
//! not behind the mutual TLS of gRPC, as Prometheus exporters usually are:
//! bind it to loopback or a management network. Every metric is listed in
//! `docs/metrics.md`.
//!
//! What [`RpcMetrics`] counts, per call (`service` and `method` from the
//! request path `/blobvirt.v1.Pool/GetBlob`):
//! * `code` is the `grpc-status` of the reply: from the response headers
//!   when the reply is trailers-only (tonic answers errors that way), else
//!   from the trailers at the end of the body;
//! * a reply body that ends without a `grpc-status`, or a failure of the
//!   transport, counts as `Unknown`; a body dropped before its end (the
//!   client went away, a stream cancelled) counts as `Canceled`;
//! * the duration runs from the request head to the end of the reply body,
//!   so for a streamed reply it covers the whole stream.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
pub use prometheus_client::registry::Registry;

/// Content type of the exposition format served.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Errors of starting the metrics endpoint.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot serve metrics on {addr} ({source}); pick another address with --metrics or {key} in the configuration file")]
    Bind {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Renders `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, registry) {
        tracing::warn!("cannot encode the metrics: {e}");
    }
    out
}

/// A running `/metrics` endpoint; dropping it stops the server.
pub struct Server {
    /// The address it listens on (port 0 resolved).
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `registry` at `http://ADDR/metrics` in the
/// background; `key` names the configuration key for the error message
/// (`[poold] metrics`). Must be called inside a tokio runtime.
pub async fn serve(
    addr: SocketAddr,
    key: &'static str,
    registry: Arc<Registry>,
) -> Result<Server, MetricsError> {
    let bind_err = |source| MetricsError::Bind { addr, key, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_err)?;
    let local = listener.local_addr().map_err(bind_err)?;
    let task = tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(addr = %local, "cannot accept a metrics connection: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let reg = registry.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| respond(req, reg.clone()));
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!("a metrics connection failed: {e}");
                }
            });
        }
    });
    tracing::info!(addr = %local, "serving Prometheus metrics at /metrics");
    Ok(Server { addr: local, task })
}

async fn respond(
    req: http::Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
) -> Result<http::Response<Full<Bytes>>, std::convert::Infallible> {
    let reply = |status: u16, ctype: &str, body: String| {
        let mut r = http::Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = http::StatusCode::from_u16(status).unwrap_or_default();
        if let Ok(v) = http::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(http::header::CONTENT_TYPE, v);
        }
        r
    };
    let plain = "text/plain; charset=utf-8";
    if req.uri().path() != "/metrics" {
        return Ok(reply(
            404,
            plain,
            "not found; metrics are at /metrics\n".into(),
        ));
    }
    if req.method() != http::Method::GET && req.method() != http::Method::HEAD {
        return Ok(reply(405, plain, "use GET /metrics\n".into()));
    }
    // Collectors may read a database or lock the mirror table: off the
    // async threads.
    let text = tokio::task::spawn_blocking(move || render(&registry))
        .await
        .unwrap_or_default();
    Ok(reply(200, CONTENT_TYPE, text))
}

/// Writes gauge `name` with one sample per `(labels, value)` from a
/// [`prometheus_client::collector::Collector`] (values read at scrape time).
pub fn encode_gauges<L: EncodeLabelSet>(
    enc: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, i64)>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::gauge::ConstGauge;
    let mut m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for (labels, v) in samples {
        ConstGauge::new(v).encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

/// [`encode_gauges`] of one gauge without labels.
pub fn encode_gauge(
    enc: &mut prometheus_client::encoding::DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::encoding::EncodeMetric;
    use prometheus_client::metrics::gauge::ConstGauge;
    let m = enc.encode_descriptor(
        name,
        help,
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(m)
}

/// Labels of `blobvirt_rpc_requests_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: String,
    pub method: String,
    pub code: &'static str,
}

/// Labels of `blobvirt_rpc_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: String,
    pub method: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Buckets of latency histograms: 100 µs to about 52 s, doubling.
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// Counts and times the gRPC calls of a server; also the tower layer
/// (`Server::builder().layer(rpc.clone())`).
#[derive(Clone, Debug)]
pub struct RpcMetrics {
    requests: Family<RpcLabels, Counter>,
    duration: Histograms<MethodLabels>,
}

impl RpcMetrics {
    /// Registers `blobvirt_rpc_requests_total` and
    /// `blobvirt_rpc_duration_seconds` in `registry`.
    pub fn register(registry: &mut Registry) -> RpcMetrics {
        let m = RpcMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(seconds_histogram),
        };
        registry.register(
            "blobvirt_rpc_requests",
            "gRPC calls served, by service, method and grpc-status code",
            m.requests.clone(),
        );
        registry.register(
            "blobvirt_rpc_duration_seconds",
            "Time from a gRPC request to the end of its reply, by service and method",
            m.duration.clone(),
        );
        m
    }

    /// The number of calls counted for `method` with `code` (for tests).
    pub fn count(&self, service: &str, method: &str, code: &'static str) -> u64 {
        let l = RpcLabels {
            service: service.into(),
            method: method.into(),
            code,
        };
        self.requests.get(&l).map(|c| c.get()).unwrap_or(0)
    }
}

/// The Go/Prometheus name of a gRPC status code (`OK`, `NotFound`, ...).
pub fn code_name(code: i32) -> &'static str {
    const NAMES: [&str; 17] = [
        "OK",
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    usize::try_from(code)
        .ok()
        .and_then(|i| NAMES.get(i))
        .copied()
        .unwrap_or("Unknown")
}

fn status_of(h: &http::HeaderMap) -> Option<&'static str> {
    let v = h.get("grpc-status")?;
    let n = v.to_str().ok()?.trim().parse::<i32>().ok()?;
    Some(code_name(n))
}

/// One call being measured; records once.
struct Call {
    m: RpcMetrics,
    labels: MethodLabels,
    start: Instant,
}

impl Call {
    fn finish(self, code: &'static str) {
        self.m
            .duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
        let MethodLabels { service, method } = self.labels;
        self.m
            .requests
            .get_or_create(&RpcLabels {
                service,
                method,
                code,
            })
            .inc();
    }
}

impl<S> tower_layer::Layer<S> for RpcMetrics {
    type Service = RpcService<S>;
    fn layer(&self, inner: S) -> RpcService<S> {
        RpcService {
            inner,
            m: self.clone(),
        }
    }
}

/// The service [`RpcMetrics`] wraps around a gRPC server's routes.
#[derive(Clone, Debug)]
pub struct RpcService<S> {
    inner: S,
    m: RpcMetrics,
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for RpcService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let path = req.uri().path().trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        let call = Call {
            m: self.m.clone(),
            labels: MethodLabels {
                service: service.to_string(),
                method: method.to_string(),
            },
            start: Instant::now(),
        };
        ResponseFuture {
            inner: self.inner.call(req),
            call: Some(call),
        }
    }
}

pin_project_lite::pin_project! {
    /// The reply future of [`RpcService`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<MeteredBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        let call = this.call.take();
        Poll::Ready(match res {
            Ok(resp) => {
                // Trailers-only: the status is in the headers, the body is empty.
                let call = match (status_of(resp.headers()), call) {
                    (Some(code), Some(c)) => {
                        c.finish(code);
                        None
                    }
                    (_, c) => c,
                };
                Ok(resp.map(|body| MeteredBody { inner: body, call }))
            }
            Err(e) => {
                if let Some(c) = call {
                    c.finish("Unknown");
                }
                Err(e)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A reply body that records its call at its trailers, its end, or
    /// when it is dropped before either.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<Call>,
    }

    impl<B> PinnedDrop for MeteredBody<B> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(c) = this.project().call.take() {
                c.finish("Canceled");
            }
        }
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = ready!(this.inner.poll_frame(cx));
        match &r {
            Some(Ok(f)) => {
                if let Some(t) = f.trailers_ref() {
                    if let Some(c) = this.call.take() {
                        c.finish(status_of(t).unwrap_or("Unknown"));
                    }
                }
            }
            Some(Err(_)) | None => {
                if let Some(c) = this.call.take() {
                    c.finish("Unknown");
                }
            }
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_prometheus_names() {
        assert_eq!(code_name(0), "OK");
        assert_eq!(code_name(5), "NotFound");
        assert_eq!(code_name(16), "Unauthenticated");
        assert_eq!(code_name(17), "Unknown");
        assert_eq!(code_name(-1), "Unknown");
    }

    #[test]
    fn rpc_families_are_in_the_text() {
        let mut reg = Registry::default();
        let m = RpcMetrics::register(&mut reg);
        Call {
            m: m.clone(),
            labels: MethodLabels {
                service: "blobvirt.v1.Pool".into(),
                method: "GetBlob".into(),
            },
            start: Instant::now(),
        }
        .finish("NotFound");
        assert_eq!(m.count("blobvirt.v1.Pool", "GetBlob", "NotFound"), 1);
        let text = render(&reg);
        assert!(
            text.contains("# TYPE blobvirt_rpc_requests_total counter"),
            "{text}"
        );
        assert!(text.contains(
            "blobvirt_rpc_requests_total{service=\"blobvirt.v1.Pool\",method=\"GetBlob\",code=\"NotFound\"} 1"
        ), "{text}");
        assert!(
            text.contains("# TYPE blobvirt_rpc_duration_seconds histogram"),
            "{text}"
        );
    }
}
