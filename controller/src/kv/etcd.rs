//! The store on etcd v3, over mutual TLS (`serve --etcd URL,...`).
//!
//! Every key is under the prefix (`/dpu/` unless told otherwise), so one etcd
//! cluster can hold several control planes and the controller's permissions
//! can be limited to its prefix with etcd's roles. A listing is read in pages
//! of [`PAGE`] keys, all at the revision of the first page, so it is one
//! consistent read however large the intent grows (etcd answers at most
//! `--max-request-bytes` per response).
//!
//! A request that cannot reach etcd, or is not answered within
//! [`super::REQUEST_TIMEOUT`], is [`KvError::Unavailable`]. One that could
//! not connect to the member the client picked is tried again ([`again`]), so
//! a member down among several costs nothing.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, TlsOptions, TxnOp, WatchOptions,
};
use tokio::sync::mpsc;

use super::{
    Cmp, Entry, Event, EventKind, KvError, Listing, Op, Revision, Txn, TxnResult, Watch, WatchItem,
    REQUEST_TIMEOUT, WATCH_BUFFER,
};

/// How long [`again`] waits before it tries a request again.
const CONNECT_RETRY: Duration = Duration::from_millis(50);

/// Runs a request until it is sent: a request that failed to connect (it
/// never reached etcd, so it cannot have been applied) is made again,
/// [`CONNECT_RETRY`] apart, for up to [`REQUEST_TIMEOUT`] in all. The client
/// spreads requests over every endpoint and counts a member it cannot
/// connect to as ready, since it fails at once: with one member of three
/// down, a request would fail now and then, and a new process (the CLI),
/// whose connections to the live members are still being made, would send
/// its first request to the dead member every time. Any other error, or an
/// answer, is returned as it is.
pub(super) async fn again<T, F, Fut>(mut request: F) -> Result<T, etcd_client::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let deadline = tokio::time::Instant::now() + REQUEST_TIMEOUT;
    loop {
        match request().await {
            Err(e)
                if not_connected(&e) && tokio::time::Instant::now() + CONNECT_RETRY < deadline =>
            {
                tokio::time::sleep(CONNECT_RETRY).await
            }
            r => return r,
        }
    }
}

/// Whether `e` says the request could not connect (tonic's `ConnectError`
/// in the status' source chain): a refused or failed connection, or a failed
/// TLS handshake.
fn not_connected(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut source = std::error::Error::source(status);
    while let Some(err) = source {
        if err.is::<tonic::ConnectError>() {
            return true;
        }
        source = err.source();
    }
    false
}

/// Keys per page of a listing.
pub const PAGE: i64 = 1_000;
/// The key prefix when none is given.
pub const DEFAULT_PREFIX: &str = "/dpu/";

/// How to reach etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdOptions {
    /// `https://host:port`, one per member.
    pub endpoints: Vec<String>,
    /// The CA that signed etcd's server certificates.
    pub ca: PathBuf,
    /// The controller's client certificate and key for etcd.
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Every key is under it; it ends with `/`.
    pub prefix: String,
}

impl EtcdOptions {
    /// Checks the options before any connection: https URLs only, a prefix
    /// that starts and ends with `/`.
    pub fn validate(&self) -> Result<(), KvError> {
        if self.endpoints.is_empty() {
            return Err(KvError::Refused("--etcd: no endpoint given".into()));
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            if !e.starts_with("https://") || e.len() == "https://".len() {
                return Err(KvError::Refused(format!(
                    "--etcd[{i}]: {e:?}: must be an https:// URL (mutual TLS only)"
                )));
            }
        }
        if !self.prefix.starts_with('/') || !self.prefix.ends_with('/') {
            return Err(KvError::Refused(format!(
                "--etcd-prefix: {:?}: must start and end with '/'",
                self.prefix
            )));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct EtcdStore {
    /// Cloned for each request (its methods take `&mut self`).
    client: Arc<Client>,
    options: Arc<EtcdOptions>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path, what: &str) -> Result<Vec<u8>, KvError> {
    std::fs::read(path).map_err(|e| KvError::Refused(format!("{what} {}: {e}", path.display())))
}

impl EtcdStore {
    /// Connects (lazily: the first request fails if etcd is down, not this).
    pub async fn connect(options: EtcdOptions) -> Result<Self, KvError> {
        options.validate()?;
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&options.ca, "--etcd-ca")?))
            .identity(Identity::from_pem(
                read(&options.cert, "--etcd-cert")?,
                read(&options.key, "--etcd-key")?,
            ));
        let connect = ConnectOptions::new()
            .with_tls(tls)
            .with_connect_timeout(REQUEST_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT);
        let client = Client::connect(&options.endpoints, Some(connect))
            .await
            .map_err(error)?;
        Ok(EtcdStore {
            client: Arc::new(client),
            options: Arc::new(options),
        })
    }

    /// A handle for one request (the client's methods take `&mut self`).
    pub(super) fn client(&self) -> Client {
        Client::clone(&self.client)
    }

    pub fn endpoints(&self) -> &[String] {
        &self.options.endpoints
    }

    pub fn prefix(&self) -> &str {
        &self.options.prefix
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.options.prefix)
    }

    fn relative(&self, kv: &KeyValue) -> Result<Entry, KvError> {
        let key = kv
            .key_str()
            .map_err(|_| KvError::Refused("a key under the prefix is not UTF-8".into()))?;
        let rel = key.strip_prefix(&self.options.prefix).unwrap_or(key);
        let value = kv.value_str().map_err(|_| KvError::NotText {
            key: key.to_string(),
        })?;
        Ok(Entry {
            key: rel.to_string(),
            value: value.to_string(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
        })
    }

    /// The cluster id etcd puts in every response header, as 16 hex digits.
    pub async fn cluster_id(&self) -> Result<String, KvError> {
        let key = self.full("");
        let resp = again(|| {
            let mut c = self.client();
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
        })
        .await
        .map_err(error)?;
        let id = resp.header().map_or(0, |h| h.cluster_id());
        Ok(format!("{id:016x}"))
    }

    pub async fn get(&self, key: &str) -> Result<(Revision, Option<Entry>), KvError> {
        let key = self.full(key);
        let resp = again(|| {
            let mut c = self.client();
            let key = key.clone();
            async move { c.get(key, None).await }
        })
        .await
        .map_err(error)?;
        let rev = resp.header().map_or(0, |h| h.revision());
        let entry = resp.kvs().first().map(|kv| self.relative(kv)).transpose()?;
        Ok((rev, entry))
    }

    pub async fn list(&self, prefix: &str) -> Result<Listing, KvError> {
        let full = self.full(prefix);
        let end = prefix_end(full.as_bytes());
        let mut from = full.into_bytes();
        let mut revision = 0;
        let mut entries = Vec::new();
        loop {
            let mut opts = GetOptions::new().with_range(end.clone()).with_limit(PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = again(|| {
                let mut c = self.client();
                let (from, opts) = (from.clone(), opts.clone());
                async move { c.get(from, Some(opts)).await }
            })
            .await
            .map_err(error)?;
            if revision == 0 {
                revision = resp.header().map_or(0, |h| h.revision());
            }
            for kv in resp.kvs() {
                entries.push(self.relative(kv)?);
            }
            match (resp.more(), resp.kvs().last()) {
                (true, Some(last)) => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        Ok(Listing { revision, entries })
    }

    pub async fn txn(&self, txn: Txn) -> Result<TxnResult, KvError> {
        let cmps: Vec<Compare> = txn
            .cmps
            .iter()
            .map(|c| match c {
                Cmp::ModRevision(k, r) => Compare::mod_revision(self.full(k), CompareOp::Equal, *r),
                Cmp::CreateRevision(k, r) => {
                    Compare::create_revision(self.full(k), CompareOp::Equal, *r)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|o| match o {
                Op::Put { key, value } => TxnOp::put(self.full(key), value.as_bytes(), None),
                Op::Delete { key } => TxnOp::delete(self.full(key), None),
                Op::DeletePrefix { prefix } => TxnOp::delete(
                    self.full(prefix),
                    Some(etcd_client::DeleteOptions::new().with_prefix()),
                ),
            })
            .collect();
        let resp = again(|| {
            let mut c = self.client();
            let txn = etcd_client::Txn::new()
                .when(cmps.clone())
                .and_then(ops.clone());
            async move { c.txn(txn).await }
        })
        .await
        .map_err(error)?;
        Ok(TxnResult {
            succeeded: resp.succeeded(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    pub async fn watch(&self, prefix: &str, from: Revision) -> Result<Watch, KvError> {
        let mut opts = WatchOptions::new().with_prefix().with_progress_notify();
        if from > 0 {
            opts = opts.with_start_revision(from);
        }
        let key = self.full(prefix);
        let mut stream = again(|| {
            let mut c = self.client();
            let (key, opts) = (key.clone(), opts.clone());
            async move { c.watch(key, Some(opts)).await }
        })
        .await
        .map_err(error)?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = stream.message() => m,
                    _ = tx.closed() => return,
                };
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => {
                        let _ = tx
                            .send(Err(KvError::Unavailable("the watch stream ended".into())))
                            .await;
                        return;
                    }
                    Err(e) => {
                        let _ = tx.send(Err(error(e))).await;
                        return;
                    }
                };
                if resp.compact_revision() > 0 {
                    let _ = tx
                        .send(Ok(WatchItem::Compacted(resp.compact_revision())))
                        .await;
                    return;
                }
                if resp.canceled() {
                    let _ = tx
                        .send(Err(KvError::Unavailable(format!(
                            "etcd cancelled the watch: {}",
                            resp.cancel_reason()
                        ))))
                        .await;
                    return;
                }
                if resp.created() && resp.events().is_empty() {
                    continue;
                }
                let item = if resp.events().is_empty() {
                    Ok(WatchItem::Progress(
                        resp.header().map_or(0, |h| h.revision()),
                    ))
                } else {
                    resp.events()
                        .iter()
                        .map(|ev| {
                            let kv = ev.kv().ok_or_else(|| {
                                KvError::Refused("a watch event without its key".into())
                            })?;
                            let put = ev.event_type() == EventType::Put;
                            let e = if put {
                                store.relative(kv)?
                            } else {
                                // A delete's kv has the key and the revision only.
                                let key = kv.key_str().map_err(|_| {
                                    KvError::Refused("a key under the prefix is not UTF-8".into())
                                })?;
                                Entry {
                                    key: key.strip_prefix(store.prefix()).unwrap_or(key).into(),
                                    value: String::new(),
                                    create_revision: 0,
                                    mod_revision: kv.mod_revision(),
                                }
                            };
                            Ok(Event {
                                kind: if put {
                                    EventKind::Put
                                } else {
                                    EventKind::Delete
                                },
                                key: e.key,
                                value: put.then_some(e.value),
                                mod_revision: e.mod_revision,
                            })
                        })
                        .collect::<Result<Vec<_>, KvError>>()
                        .map(WatchItem::Events)
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Watch { items: rx })
    }

    pub async fn compact(&self, revision: Revision) -> Result<(), KvError> {
        again(|| {
            let mut c = self.client();
            async move { c.compact(revision, None).await }
        })
        .await
        .map_err(error)?;
        Ok(())
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub(super) fn error(e: etcd_client::Error) -> KvError {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::GRpcStatus(s) => match s.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                KvError::Unavailable(format!("etcd: {}", s.message()))
            }
            Code::OutOfRange if s.message().contains("compacted") => KvError::Compacted {
                asked: 0,
                compacted: 0,
            },
            Code::ResourceExhausted => KvError::Refused(format!(
                "etcd: {:?}: {} (one transaction is too large for this etcd: raise its --max-request-bytes and --max-txn-ops; controller/README.md, \"The store\")",
                s.code(),
                s.message()
            )),
            _ if s.message().contains("too many operations in txn request") => {
                KvError::Refused(format!(
                    "etcd: {} (raise etcd's --max-txn-ops to the objects of the largest apply plus one; controller/README.md, \"The store\")",
                    s.message()
                ))
            }
            _ => KvError::Refused(format!("etcd: {:?}: {}", s.code(), s.message())),
        },
        E::TransportError(t) => KvError::Unavailable(format!("etcd: {t}")),
        E::IoError(io) => KvError::Unavailable(format!("etcd: {io}")),
        other => KvError::Refused(format!("etcd: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_is_the_next_key_after_the_prefix() {
        assert_eq!(prefix_end(b"/dpu/"), b"/dpu0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
