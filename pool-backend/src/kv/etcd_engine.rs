//! The etcd engine (`--engine etcd`): poold's keys in an etcd v3 cluster,
//! under one key prefix, through the etcd-client crate.
//!
//! * A read transaction reads at one etcd revision: its first request
//!   fixes the revision (the store's at that moment), every later one asks
//!   for it, so it sees one committed state however many round trips it
//!   takes. Scans are paged ([`PAGE`] keys per request).
//! * A write transaction reads the same way, keeps its puts and deletes in
//!   an overlay (reads inside it see them), and commits them as one etcd
//!   `Txn`: atomic, and durable on a majority of the members when etcd
//!   answers. Writers in this process are serialized.
//! * A commit is checked against etcd's limits before it is sent
//!   ([`EtcdOptions::max_txn_ops`], [`EtcdOptions::max_request_bytes`],
//!   which must match the members' `--max-txn-ops` and
//!   `--max-request-bytes`); one that does not fit fails with a sentence
//!   that says which setting to raise, and nothing of it is written.
//! * Every commit is also conditional on a commit token (a key beside the
//!   prefix) holding the previous commit's value, and writes a new one:
//!   a commit sent again after its answer was lost applies once, and a
//!   second writer on the prefix is refused. Requests survive a lost
//!   member and a leader election (`kv/etcd_retry.rs`).
//! * A fence ([`EtcdKv::set_fence`]) makes every commit conditional on a
//!   key's create revision (an election key): once the key is gone or
//!   re-created, commits fail with [`KvError::Fenced`] and write nothing.
//!
//! * A read cache ([`CACHE_ENTRIES`] keys, least recently used out)
//!   answers `get`s without a round trip. It is right because this poold
//!   is the only writer of its prefix (the election and the fence make it
//!   so): an entry is a key's latest value with the revision it holds
//!   from, filled from reads and from this engine's own commits, and a
//!   read pinned at revision `r` uses it only when that revision is `<= r`.
//!   While the engine is fenced, the cache is used only as long as the
//!   leader's lease was renewed lately (`kv/etcd_leader.rs`): a paused
//!   poold that resumes reads etcd, not its memory.
//!
//! The trait is synchronous; the engine owns a small tokio runtime and
//! waits for its requests on a channel, so it works from any thread.

use std::cell::Cell;
use std::future::Future;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KvClient,
    TlsOptions, Txn, TxnOp,
};

use super::etcd_retry::attempt;
use super::overlay::{Overlay, Pending};
use super::{prefix_end, Kv, KvError, KvResult, ReadTx, WriteTx};

/// Keys per range request of a scan.
pub const PAGE: i64 = 1000;
/// Keys one batched read ([`Kv::prefetch`]) asks for.
pub const PREFETCH_BATCH: usize = 4096;
/// Keys the read cache holds.
pub const CACHE_ENTRIES: usize = 1 << 19;
/// A revision learnt this recently may pin a read that starts from the
/// cache (etcd keeps history for minutes: `--auto-compaction-retention`).
const FRESH_REV: Duration = Duration::from_secs(60);

/// A key's latest value (`None`: absent) and the revision it holds from.
type Cached = (Option<Vec<u8>>, i64);
/// Bytes a request may carry besides its keys and values (headers, the
/// fence, per-operation framing is counted per operation).
const REQUEST_SLACK: usize = 4096;
/// Framing counted per operation of a commit.
const OP_OVERHEAD: usize = 16;

/// How to reach the etcd cluster.
#[derive(Clone, Debug)]
pub struct EtcdOptions {
    /// Client URLs of the members (`http://HOST:PORT` or `https://…`).
    pub endpoints: Vec<String>,
    /// Prefix of every key poold writes (one cluster per prefix).
    pub prefix: Vec<u8>,
    /// The members' `--max-txn-ops`.
    pub max_txn_ops: usize,
    /// The members' `--max-request-bytes`.
    pub max_request_bytes: usize,
    /// PEM files of the CA, and this host's certificate and key, for
    /// `https://` endpoints.
    pub tls: Option<EtcdTls>,
}

/// Client TLS towards etcd: the cluster's CA and this host's identity.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

impl EtcdOptions {
    /// `endpoints` with the limits blobvirt asks the members for
    /// (`--max-txn-ops 8192 --max-request-bytes 8388608`).
    pub fn new(endpoints: Vec<String>, prefix: impl Into<Vec<u8>>) -> Self {
        EtcdOptions {
            endpoints,
            prefix: prefix.into(),
            max_txn_ops: 8192,
            max_request_bytes: 8 << 20,
            tls: None,
        }
    }
}

pub(super) fn lock_pub<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock(m)
}

pub(super) fn engine<E: std::fmt::Display>(what: &str, e: E) -> KvError {
    let s = e.to_string();
    if s.contains("compacted") {
        return KvError::Engine(format!(
            "etcd: {what}: the revision being read was compacted ({s}); keep at least a few minutes of history (etcd --auto-compaction-mode periodic --auto-compaction-retention 10m)"
        ));
    }
    KvError::Engine(format!("etcd: {what}: {s}"))
}

/// The engine's runtime; dropped with `shutdown_background`, so an engine
/// may be dropped anywhere (also inside another runtime).
pub(super) struct Rt(Option<tokio::runtime::Runtime>);

impl Rt {
    pub(super) fn get(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("runtime lives until drop")
    }
}

impl Drop for Rt {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

/// An etcd cluster as a [`Kv`].
pub struct EtcdKv {
    pub(super) rt: Rt,
    pub(super) client: Client,
    pub(super) kv: KvClient,
    pub(super) opts: EtcdOptions,
    /// Serializes writers; holds the commit token this engine last wrote
    /// (`None`: not known yet; `Some(None)`: the key is absent).
    writer: Mutex<Option<Option<Vec<u8>>>>,
    pub(super) fence: Mutex<Option<(Vec<u8>, i64)>>,
    cache: Mutex<lru::LruCache<Vec<u8>, Cached>>,
    /// The newest revision seen in an answer or a commit, and when.
    known: Mutex<(i64, Option<Instant>)>,
    /// While fenced: the cache may be used until then (the lease's last
    /// renewal plus its life, minus a margin). `None`: always.
    cache_until: std::sync::Arc<Mutex<Option<Instant>>>,
    hits: AtomicI64,
    /// Endpoints taken out of the client's balancer for a while.
    pub(super) shunned: std::sync::Arc<Mutex<std::collections::HashSet<String>>>,
}

impl EtcdKv {
    /// Connects to the cluster (the first reachable endpoint; the client
    /// moves to another when one fails).
    pub fn connect(opts: EtcdOptions) -> KvResult<Self> {
        if opts.endpoints.is_empty() {
            return Err(KvError::Engine(
                "etcd: no endpoints; give poold --etcd-endpoints URL[,URL…]".into(),
            ));
        }
        let rt = Rt(Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("etcd-kv")
                .enable_all()
                .build()
                .map_err(|e| engine("starting the client runtime", e))?,
        ));
        let mut co = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(5));
        if let Some(t) = &opts.tls {
            co = co.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&t.ca_pem))
                    .identity(Identity::from_pem(&t.cert_pem, &t.key_pem)),
            );
        }
        let eps = opts.endpoints.clone();
        let what = format!("connecting to {}", eps.join(","));
        let client = block(
            rt.get(),
            async move { Client::connect(eps, Some(co)).await },
        )?
        .map_err(|e| engine(&what, e))?;
        let kv = client.kv_client();
        Ok(EtcdKv {
            rt,
            client,
            kv,
            opts,
            writer: Mutex::new(None),
            fence: Mutex::new(None),
            cache: Mutex::new(lru::LruCache::new(
                NonZeroUsize::new(CACHE_ENTRIES).expect("non-zero"),
            )),
            known: Mutex::new((0, None)),
            cache_until: std::sync::Arc::default(),
            hits: AtomicI64::new(0),
            shunned: std::sync::Arc::default(),
        })
    }

    /// Where the leader's lease renewal records until when the read cache
    /// may be used (`None`, the start: always, as without an election).
    pub(super) fn cache_deadline(&self) -> std::sync::Arc<Mutex<Option<Instant>>> {
        self.cache_until.clone()
    }

    /// Reads the cache answered so far.
    pub fn cache_hits(&self) -> i64 {
        self.hits.load(Ordering::Relaxed)
    }

    fn cache_ok(&self) -> bool {
        lock(&self.cache_until).is_none_or(|t| Instant::now() < t)
    }

    fn learn(&self, rev: i64) {
        let mut k = lock(&self.known);
        if rev >= k.0 {
            *k = (rev, Some(Instant::now()));
        }
    }

    /// A recent revision to pin a read that starts from the cache (0,
    /// the latest, when the cache may not be used).
    fn fresh_rev(&self) -> i64 {
        if !self.cache_ok() {
            return 0;
        }
        match *lock(&self.known) {
            (r, Some(t)) if t.elapsed() < FRESH_REV => r,
            _ => 0,
        }
    }

    /// Caches `v` for `key` from revision `from`, unless a newer entry is
    /// there.
    fn remember(&self, key: &[u8], v: Option<Vec<u8>>, from: i64) {
        let mut c = lock(&self.cache);
        if c.peek(key).is_some_and(|(_, f)| *f > from) {
            return;
        }
        c.put(key.to_vec(), (v, from));
    }

    fn cached(&self, key: &[u8], rev: i64) -> Option<Option<Vec<u8>>> {
        if rev <= 0 || !self.cache_ok() {
            return None;
        }
        let mut c = lock(&self.cache);
        match c.get(key) {
            Some((v, from)) if *from <= rev => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                Some(v.clone())
            }
            _ => None,
        }
    }

    /// Makes every later commit conditional on `key` (unprefixed: a key
    /// of etcd's own, such as an election key) still having `create_rev`
    /// as its create revision; `None` lifts the fence.
    pub fn set_fence(&self, fence: Option<(Vec<u8>, i64)>) {
        *lock(&self.fence) = fence;
    }

    fn full(&self, key: &[u8]) -> Vec<u8> {
        let mut k = self.opts.prefix.clone();
        k.extend_from_slice(key);
        k
    }

    /// The etcd client (for the election, `kv/etcd_leader.rs`).
    pub(super) fn client(&self) -> Client {
        self.client.clone()
    }

    pub(super) fn run<T: Send + 'static>(
        &self,
        f: impl Future<Output = T> + Send + 'static,
    ) -> KvResult<T> {
        block(self.rt.get(), f)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on `rt` and waits for it on this thread (any thread: a
/// channel, not `block_on`, so a caller inside another runtime is fine).
fn block<T: Send + 'static>(
    rt: &tokio::runtime::Runtime,
    f: impl Future<Output = T> + Send + 'static,
) -> KvResult<T> {
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    rt.spawn(async move {
        let _ = tx.send(f.await);
    });
    rx.recv()
        .map_err(|_| KvError::Engine("etcd: the client runtime stopped".into()))
}

/// Reads at one revision (0 until the first answer fixes it).
struct EtcdRead<'a> {
    kv: &'a EtcdKv,
    rev: Cell<i64>,
}

impl EtcdRead<'_> {
    fn fix(&self, header_rev: Option<i64>) {
        if let Some(r) = header_rev {
            self.kv.learn(r);
            if self.rev.get() == 0 {
                self.rev.set(r);
            }
        }
    }
}

impl ReadTx for EtcdRead<'_> {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        if self.rev.get() == 0 {
            self.rev.set(self.kv.fresh_rev());
        }
        if let Some(v) = self.kv.cached(key, self.rev.get()) {
            return Ok(v);
        }
        let k = self.kv.full(key);
        let opts = GetOptions::new().with_revision(self.rev.get());
        let r = self.kv.retrying("reading a key", || {
            let (mut c, k, opts) = (self.kv.kv.clone(), k.clone(), opts.clone());
            async move { attempt(c.get(k, Some(opts))).await }
        })?;
        self.fix(r.header().map(|h| h.revision()));
        let (v, from) = match r.kvs().first() {
            Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision()),
            None => (None, self.rev.get()),
        };
        self.kv.remember(key, v.clone(), from);
        Ok(v)
    }

    fn scan(
        &self,
        start: &[u8],
        end: Option<&[u8]>,
        f: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> KvResult<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let plen = self.kv.opts.prefix.len();
        let stop = match end {
            Some(e) => self.kv.full(e),
            None => prefix_end(&self.kv.opts.prefix).unwrap_or_else(|| vec![0]),
        };
        let mut from = self.kv.full(start);
        loop {
            let opts = GetOptions::new()
                .with_range(stop.clone())
                .with_limit(PAGE)
                .with_revision(self.rev.get());
            let r = self.kv.retrying("scanning keys", || {
                let (mut c, k, opts) = (self.kv.kv.clone(), from.clone(), opts.clone());
                async move { attempt(c.get(k, Some(opts))).await }
            })?;
            self.fix(r.header().map(|h| h.revision()));
            for kv in r.kvs() {
                if !f(&kv.key()[plen..], kv.value()) {
                    return Ok(());
                }
            }
            match r.kvs().last() {
                Some(last) if r.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(()),
            }
        }
    }
}

impl Kv for EtcdKv {
    fn read_dyn(&self, f: &mut dyn FnMut(&dyn ReadTx) -> KvResult<()>) -> KvResult<()> {
        f(&EtcdRead {
            kv: self,
            rev: Cell::new(0),
        })
    }

    fn write_dyn(&self, f: &mut dyn FnMut(&mut dyn WriteTx) -> KvResult<()>) -> KvResult<()> {
        let mut last = lock(&self.writer);
        let read = EtcdRead {
            kv: self,
            rev: Cell::new(0),
        };
        let mut tx = Overlay::new(&read);
        f(&mut tx)?;
        let overlay = tx.into_pending();
        if overlay.is_empty() {
            return Ok(());
        }
        // The commit token is one more operation.
        let ops = overlay.len();
        let bytes = request_bytes(&self.opts.prefix, &overlay) + 64;
        if ops + 1 > self.opts.max_txn_ops || bytes > self.opts.max_request_bytes {
            return Err(KvError::Engine(format!(
                "etcd: a metadata change of {ops} keys ({bytes} bytes) is over the limit of {} keys and {} bytes per transaction; start the etcd members with larger --max-txn-ops and --max-request-bytes and give poold the same values",
                self.opts.max_txn_ops, self.opts.max_request_bytes
            )));
        }
        let token_key = self.commit_key();
        let before = match last.clone() {
            Some(t) => t,
            None => self.token_now()?,
        };
        let token = rand::random::<[u8; 16]>().to_vec();
        let mut txn_ops: Vec<TxnOp> = overlay
            .iter()
            .map(|(k, v)| match v {
                Some(v) => TxnOp::put(self.full(k), v.clone(), None),
                None => TxnOp::delete(self.full(k), None),
            })
            .collect();
        txn_ops.push(TxnOp::put(token_key.clone(), token.clone(), None));
        let fence = lock(&self.fence).clone();
        let mut when = vec![match &before {
            Some(t) => Compare::value(token_key.clone(), CompareOp::Equal, t.clone()),
            None => Compare::version(token_key.clone(), CompareOp::Equal, 0),
        }];
        if let Some((key, rev)) = &fence {
            when.push(Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                *rev,
            ));
        }
        let txn = Txn::new().when(when).and_then(txn_ops);
        let r = match self.retrying("committing a metadata change", || {
            let (mut c, txn) = (self.kv.clone(), txn.clone());
            async move { attempt(c.txn(txn)).await }
        }) {
            Ok(r) => r,
            Err(e) => {
                // It may have applied after all: forget the keys it wrote
                // and read the token again before the next commit.
                *last = None;
                let mut c = lock(&self.cache);
                for (k, _) in overlay {
                    c.pop(&k);
                }
                return Err(e);
            }
        };
        let rev = if r.succeeded() {
            r.header().map(|h| h.revision())
        } else {
            // An earlier try of this same commit (its answer was lost) may
            // have applied it: then the token is this commit's.
            match self.token_now()? {
                Some(t) if t == token => None,
                now => {
                    *last = Some(now);
                    // Another writer: what this engine cached, and the
                    // revision it reads at, may be old.
                    lock(&self.cache).clear();
                    *lock(&self.known) = (0, None);
                    return Err(match fence {
                        Some((key, _)) if !self.fence_holds()? => {
                            KvError::Fenced(String::from_utf8_lossy(&key).into_owned())
                        }
                        _ => KvError::Engine(format!(
                            "etcd: the metadata under {} was changed by another writer (a poold outside the election, or another cluster with the same etcd_prefix); stop that writer, then retry",
                            String::from_utf8_lossy(&self.opts.prefix)
                        )),
                    });
                }
            }
        };
        *last = Some(Some(token));
        if let Some(rev) = rev {
            self.learn(rev);
            for (k, v) in overlay {
                let mut c = lock(&self.cache);
                c.put(k, (v, rev));
            }
        } else {
            // No revision to file the writes under: forget them.
            let mut c = lock(&self.cache);
            for (k, _) in overlay {
                c.pop(&k);
            }
        }
        Ok(())
    }

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn txn_budget(&self) -> Option<usize> {
        Some(self.opts.max_txn_ops)
    }

    fn batched_reads(&self) -> bool {
        true
    }

    /// Reads the keys the cache does not hold with one `Txn` of range
    /// requests per [`PREFETCH_BATCH`] keys, and caches what it finds
    /// (absent keys as absent) from that `Txn`'s revision.
    fn prefetch(&self, keys: &[Vec<u8>]) -> KvResult<()> {
        if !self.cache_ok() {
            return Ok(());
        }
        let missing: Vec<&Vec<u8>> = {
            let c = lock(&self.cache);
            keys.iter().filter(|k| !c.contains(*k)).collect()
        };
        let per = PREFETCH_BATCH.min(self.opts.max_txn_ops).max(1);
        for batch in missing.chunks(per) {
            let ops: Vec<TxnOp> = batch
                .iter()
                .map(|k| TxnOp::get(self.full(k), None))
                .collect();
            let txn = Txn::new().and_then(ops);
            let r = self.retrying("reading keys in a batch", || {
                let (mut c, txn) = (self.kv.clone(), txn.clone());
                async move { attempt(c.txn(txn)).await }
            })?;
            let Some(rev) = r.header().map(|h| h.revision()) else {
                continue;
            };
            self.learn(rev);
            for (k, got) in batch.iter().zip(r.op_responses()) {
                if let etcd_client::TxnOpResponse::Get(g) = got {
                    match g.kvs().first() {
                        Some(kv) => self.remember(k, Some(kv.value().to_vec()), kv.mod_revision()),
                        None => self.remember(k, None, rev),
                    }
                }
            }
        }
        Ok(())
    }
}

/// The bytes a commit of `overlay` sends, roughly: keys (with the
/// prefix), values and per-operation framing, plus the request's own.
fn request_bytes(prefix: &[u8], overlay: &Pending) -> usize {
    REQUEST_SLACK
        + overlay
            .iter()
            .map(|(k, v)| prefix.len() + k.len() + v.as_ref().map_or(0, Vec::len) + OP_OVERHEAD)
            .sum::<usize>()
}

#[cfg(test)]
mod tests;
