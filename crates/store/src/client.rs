//! The store client: what a front end (or an admin command) uses to reach a replicated store
//! through its listener, following the primary wherever it is.
//!
//! A request goes to the last known primary, else the listener, else each replica in turn; a
//! replica that is not the primary names it, and the client goes there. Writes carry a request
//! id, so a write retried after a failover is applied once. A request keeps trying for
//! `deadline` (a failover takes seconds), then fails with `StoreError::Closed`. While no
//! primary is known, one request at a time probes the replicas (every `PROBE_EVERY`) and the
//! others wait for what it finds, so thousands of waiting requests cost a few probes.

use crate::machine::StoreError;
use crate::model::*;
use crate::node::random_id;
use crate::pool::RpcPool;
use crate::proto::*;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Where a store can be reached.
#[derive(Debug, Clone)]
pub struct StoreAddress {
    pub store: String,
    /// The listener, when the topology gives one.
    pub listener: Option<String>,
    /// Every replica's rpc address.
    pub replicas: Vec<Endpoint>,
}

/// A client of one store; cheap to clone.
#[derive(Clone)]
pub struct StoreClient {
    address: Arc<StoreAddress>,
    pool: RpcPool,
    primary: Arc<Mutex<Option<String>>>,
    search: Arc<Search>,
    /// How long a request keeps trying.
    pub deadline: Duration,
    /// How long one attempt may take.
    pub attempt: Duration,
}

impl StoreClient {
    /// A client for `address` over `pool`.
    pub fn new(address: StoreAddress, pool: RpcPool) -> StoreClient {
        StoreClient {
            address: Arc::new(address),
            pool,
            primary: Arc::default(),
            search: Arc::default(),
            deadline: Duration::from_secs(20),
            attempt: Duration::from_secs(5),
        }
    }

    /// The store's name.
    pub fn store(&self) -> &str {
        &self.address.store
    }

    fn candidates(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(p) = self.primary.lock()
            && let Some(a) = p.clone()
        {
            out.push(a);
        }
        if let Some(l) = &self.address.listener {
            out.push(l.clone());
        }
        for r in &self.address.replicas {
            out.push(r.addr.clone());
        }
        let mut seen = std::collections::HashSet::new();
        out.retain(|a| seen.insert(a.clone()));
        out
    }

    fn remember(&self, addr: Option<String>) {
        if let Ok(mut p) = self.primary.lock() {
            *p = addr;
        }
    }

    /// Sends `op` to the primary, following redirects, until an answer or the deadline.
    /// `Refusal::Store` and `Refusal::Refused` end the request; other refusals move on.
    pub async fn call<T: serde::de::DeserializeOwned>(&self, op: &str, body: Vec<u8>) -> Reply<T> {
        let service = format!("store/{}/{op}", self.address.store);
        let started = tokio::time::Instant::now();
        let end = started + self.deadline;
        let mut last = Refusal::Unavailable("no replica answered".into());
        // What the attempts met (failed ones, and all once the call is slow), for the warning a
        // slow call leaves.
        let mut trail: Vec<String> = Vec::new();
        let mut waits = 0u32;
        let slow = |trail: &[String], waits: u32| {
            let took = started.elapsed();
            if took > Duration::from_secs(1) {
                tracing::warn!(store = %self.address.store, %op, ?took, waits_for_another_probe = waits, attempts = ?trail, "slow store call");
            }
        };
        loop {
            if self.search.lost() && !self.search.claim() {
                // Another request of this client is looking for the primary: wait for it.
                let found = self.search.found.notified();
                if tokio::time::Instant::now() >= end {
                    return Err(last);
                }
                let _ = tokio::time::timeout(PROBE_EVERY, found).await;
                waits += 1;
                if self.search.lost() {
                    continue;
                }
            }
            let mut redirected = false;
            for addr in self.candidates() {
                let t = started.elapsed().as_millis();
                let answer = self
                    .pool
                    .call(&addr, &service, body.clone(), self.attempt)
                    .await;
                // Kept only once the call is slow or an attempt fails, so that the common call
                // (one quick answer) formats nothing.
                if trail.len() < 64
                    && (answer.is_err() || started.elapsed() > Duration::from_millis(100))
                {
                    trail.push(format!(
                        "{t}..{} ms {addr}: {}",
                        started.elapsed().as_millis(),
                        match &answer {
                            Ok(_) => "answered".to_string(),
                            Err(e) => e.to_string(),
                        }
                    ));
                }
                match answer {
                    Ok(bytes) => match decode::<Reply<T>>(&bytes, "reply") {
                        Ok(Ok(v)) => {
                            // The listener stands for the primary; remember a replica address only.
                            if self.address.listener.as_deref() != Some(addr.as_str()) {
                                self.remember(Some(addr));
                            }
                            self.search.found();
                            slow(&trail, waits);
                            return Ok(v);
                        }
                        Ok(Err(Refusal::NotPrimary { primary })) => {
                            last = Refusal::NotPrimary {
                                primary: primary.clone(),
                            };
                            if let Some(p) = primary
                                && p.addr != addr
                            {
                                self.remember(Some(p.addr));
                                redirected = true;
                                break;
                            }
                        }
                        Ok(Err(e @ (Refusal::Store(_) | Refusal::Refused(_)))) => {
                            self.search.found();
                            slow(&trail, waits);
                            return Err(e);
                        }
                        Ok(Err(e)) => last = e,
                        Err(e) => last = e,
                    },
                    Err(e) => {
                        if self
                            .primary
                            .lock()
                            .map(|p| p.as_deref() == Some(addr.as_str()))
                            .unwrap_or(false)
                        {
                            self.remember(None);
                        }
                        last = Refusal::Unavailable(format!("{addr}: {e}"));
                    }
                }
            }
            if tokio::time::Instant::now() >= end {
                slow(&trail, waits);
                return Err(last);
            }
            if !redirected {
                self.search.lose();
                let found = self.search.found.notified();
                let _ = tokio::time::timeout(PROBE_EVERY, found).await;
            }
        }
    }

    /// Applies a command on the primary; exactly once, even across a failover.
    pub async fn apply(&self, cmd: Command) -> Result<Applied, StoreError> {
        let env = Envelope {
            request: Some(random_id()),
            cmd,
        };
        self.call::<Applied>("apply", encode(&env))
            .await
            .map_err(to_store_error)
    }

    /// Runs a query with the given consistency.
    pub async fn query(
        &self,
        query: Query,
        consistency: Consistency,
    ) -> Result<QueryAnswer, StoreError> {
        let req = QueryRequest { query, consistency };
        self.call::<QueryAnswer>("query", encode(&req))
            .await
            .map_err(to_store_error)
    }

    /// The store's status as its primary (or, without one, any replica) reports it.
    pub async fn status(&self) -> Reply<StoreStatus> {
        self.call::<StoreStatus>("status", Vec::new()).await
    }

    /// Each replica's own answer to `op`, without following the primary (for `status` when
    /// there is no primary, and `force-service` on a chosen replica).
    pub async fn ask(&self, addr: &str, op: &str, body: Vec<u8>) -> Reply<Vec<u8>> {
        let service = format!("store/{}/{op}", self.address.store);
        self.pool
            .call(addr, &service, body, self.attempt)
            .await
            .map_err(|e| Refusal::Unavailable(format!("{addr}: {e}")))
    }

    /// Forced service on the replica at `addr` (`confirm`), or only the loss it would imply.
    pub async fn force(&self, addr: &str, confirm: bool) -> Reply<ForceReport> {
        let bytes = self
            .ask(addr, "force", encode(&ForceRequest { confirm }))
            .await?;
        decode::<Reply<ForceReport>>(&bytes, "force report")?
    }

    /// The replicas' addresses.
    pub fn replicas(&self) -> &[Endpoint] {
        &self.address.replicas
    }
}

/// While no primary is known, the client's requests probe the replicas at most this often
/// between them (one request probes, the others wait for what it finds), so a failover costs
/// a few probes per interval however many requests are waiting.
const PROBE_EVERY: Duration = Duration::from_millis(50);

/// The search for the primary that a client's waiting requests share.
#[derive(Default)]
struct Search {
    /// The last round of some request reached no primary (and none has since).
    lost: std::sync::atomic::AtomicBool,
    last_probe: Mutex<Option<std::time::Instant>>,
    /// Woken when a request reaches the primary.
    found: tokio::sync::Notify,
}

impl Search {
    fn lost(&self) -> bool {
        self.lost.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lose(&self) {
        self.lost.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// A request reached the primary: the waiting ones go now.
    fn found(&self) {
        if self.lost.swap(false, std::sync::atomic::Ordering::Relaxed) {
            self.found.notify_waiters();
        }
    }

    /// May this request probe now? True for at most one request per `PROBE_EVERY`.
    fn claim(&self) -> bool {
        let Ok(mut last) = self.last_probe.lock() else {
            return true;
        };
        let now = std::time::Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < PROBE_EVERY => false,
            _ => {
                *last = Some(now);
                true
            }
        }
    }
}

/// What a front end makes of a refusal.
fn to_store_error(r: Refusal) -> StoreError {
    match r {
        Refusal::Store(e) => e,
        other => StoreError::Storage(format!("store unavailable: {other}")),
    }
}
