//! The simulated network: every replication message goes through here, and a seeded
//! generator decides its fate: lost (request or reply), delayed (which also reorders it
//! against later messages), or blocked by a partition (one-way or two-way links, checked when
//! the message is sent and again when it arrives).
//!
//! A message is delivered by a task of its own, so a late request still reaches its target
//! after the sender gave up, as on a real network. A lost message or a refused link shows up
//! to the sender after a detection delay (a connection found dead), at most its timeout.

use super::machine::SimMachine;
use super::rng::{Rng, derive};
use replica::{BoxFuture, Member, Replica, Transport};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// A deliberately broken network, to prove the checker can fail.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum NetBug {
    #[default]
    None,
    /// Appends to this member are never delivered, yet answered "success": its leader
    /// believes it caught up (its reported lag is a lie).
    FakeAcksTo(String),
}

/// Message counters.
#[derive(Debug, Default, Clone)]
pub struct NetStats {
    pub sent: u64,
    pub lost: u64,
    pub blocked: u64,
    pub delivered: u64,
}

struct State {
    seed: u64,
    /// One generator per directed link, so the fate of a link's n-th message does not depend
    /// on the order in which tasks on different links happen to run (tokio wakes the waiters
    /// of a watch channel in an order it draws at random).
    links: BTreeMap<(String, String), Rng>,
    /// Probability that a request, or a reply, is lost.
    drop: f64,
    /// Each leg of a message is delayed uniformly in `[0, max_delay_ms]`.
    max_delay_ms: u64,
    /// Directed links cut by the current partition: (from, to).
    blocked: BTreeSet<(String, String)>,
    /// Members cut from everyone for good (a lost site).
    lost_sites: BTreeSet<String>,
    bug: NetBug,
    stats: NetStats,
}

/// The network and the members on it.
pub struct Net {
    /// Every message and its fate, when asked for (to compare two runs of a seed).
    pub log: Option<Mutex<Vec<String>>>,
    t0: Instant,
    state: Mutex<State>,
    members: Mutex<BTreeMap<String, Replica<SimMachine>>>,
}

/// The fate of one message, drawn when it is sent.
struct Fate {
    lose_request: bool,
    lose_reply: bool,
    request_delay: Duration,
    reply_delay: Duration,
    /// How long a sender takes to notice a message is lost (a dead connection).
    detect: Duration,
}

impl Net {
    pub fn new(seed: u64, drop: f64, max_delay_ms: u64, bug: NetBug, log: bool) -> Arc<Net> {
        Arc::new(Net {
            log: log.then(|| Mutex::new(Vec::new())),
            t0: Instant::now(),
            state: Mutex::new(State {
                seed,
                links: BTreeMap::new(),
                drop,
                max_delay_ms,
                blocked: BTreeSet::new(),
                lost_sites: BTreeSet::new(),
                bug,
                stats: NetStats::default(),
            }),
            members: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn transport(self: &Arc<Net>, from: &str) -> Arc<dyn Transport> {
        Arc::new(SimTransport {
            net: self.clone(),
            from: from.to_string(),
        })
    }

    pub fn add(&self, name: &str, r: Replica<SimMachine>) {
        self.members.lock().unwrap().insert(name.to_string(), r);
    }

    pub fn remove(&self, name: &str) -> Option<Replica<SimMachine>> {
        self.members.lock().unwrap().remove(name)
    }

    pub fn get(&self, name: &str) -> Option<Replica<SimMachine>> {
        self.members.lock().unwrap().get(name).cloned()
    }

    /// The members that are up, by name.
    pub fn up(&self) -> BTreeMap<String, Replica<SimMachine>> {
        self.members.lock().unwrap().clone()
    }

    /// Replaces the partition with these cut links.
    pub fn partition(&self, links: BTreeSet<(String, String)>) {
        self.state.lock().unwrap().blocked = links;
    }

    /// Ends the partition (lost sites stay lost).
    pub fn heal(&self) {
        self.state.lock().unwrap().blocked.clear();
    }

    pub fn partitioned(&self) -> bool {
        !self.state.lock().unwrap().blocked.is_empty()
    }

    /// Cuts `name` from everyone, for good.
    pub fn lose_site(&self, name: &str) {
        self.state
            .lock()
            .unwrap()
            .lost_sites
            .insert(name.to_string());
    }

    /// Sets the quality of every link.
    pub fn set_quality(&self, drop: f64, max_delay_ms: u64) {
        let mut s = self.state.lock().unwrap();
        s.drop = drop;
        s.max_delay_ms = max_delay_ms;
    }

    pub fn stats(&self) -> NetStats {
        self.state.lock().unwrap().stats.clone()
    }

    fn is_blocked(&self, from: &str, to: &str) -> bool {
        let s = self.state.lock().unwrap();
        s.lost_sites.contains(from)
            || s.lost_sites.contains(to)
            || s.blocked.contains(&(from.to_string(), to.to_string()))
    }

    fn fate(&self, from: &str, to: &str) -> Fate {
        let mut s = self.state.lock().unwrap();
        s.stats.sent += 1;
        let (drop, max, seed) = (s.drop, s.max_delay_ms, s.seed);
        let r = s
            .links
            .entry((from.to_string(), to.to_string()))
            .or_insert_with(|| Rng::new(derive(seed, &format!("{from}->{to}"))));
        // Most messages are quick, some take up to the maximum: late ones overtake nothing
        // but are overtaken (reordering), and replies can miss their deadline.
        let delay = |r: &mut Rng| {
            let cap = if r.chance(0.7) { max / 5 } else { max };
            Duration::from_millis(r.between(0, cap))
        };
        Fate {
            lose_request: r.chance(drop),
            lose_reply: r.chance(drop),
            request_delay: delay(r),
            reply_delay: delay(r),
            detect: Duration::from_millis(r.between(20, 300)),
        }
    }

    fn count(&self, f: impl FnOnce(&mut NetStats)) {
        f(&mut self.state.lock().unwrap().stats);
    }

    fn fakes_acks_to(&self, to: &str, kind: &str) -> bool {
        kind == "append" && self.state.lock().unwrap().bug == NetBug::FakeAcksTo(to.to_string())
    }
}

struct SimTransport {
    net: Arc<Net>,
    from: String,
}

/// Postcard of `Ok(AppendEntriesResponse::Success)`: both are variant 0.
const FAKE_APPEND_SUCCESS: [u8; 2] = [0, 0];

impl Transport for SimTransport {
    fn call(
        &self,
        to: &Member,
        service: String,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        let net = self.net.clone();
        let from = self.from.clone();
        let to = to.server.clone();
        Box::pin(async move {
            let start = Instant::now();
            let deadline = start + timeout;
            let kind = service.rsplit('/').next().unwrap_or("").to_string();
            let fate = net.fate(&from, &to);
            if let Some(log) = &net.log {
                log.lock().unwrap().push(format!(
                    "{:>6} {from}->{to} {kind} {} bytes: lost {}/{} delay {:?}/{:?}",
                    Instant::now().duration_since(net.t0).as_millis(),
                    body.len(),
                    fate.lose_request,
                    fate.lose_reply,
                    fate.request_delay,
                    fate.reply_delay
                ));
            }
            let noticed = (start + fate.detect).min(deadline);
            if net.fakes_acks_to(&to, &kind) {
                tokio::time::sleep(fate.request_delay).await;
                return Ok(FAKE_APPEND_SUCCESS.to_vec());
            }
            if net.is_blocked(&from, &to) {
                net.count(|s| s.blocked += 1);
                tokio::time::sleep_until(noticed).await;
                return Err(format!("link {from} -> {to} is cut"));
            }
            if fate.lose_request {
                net.count(|s| s.lost += 1);
                tokio::time::sleep_until(noticed).await;
                return Err(format!("request {from} -> {to} lost"));
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let carrier = net.clone();
            tokio::spawn(async move {
                let net = carrier;
                tokio::time::sleep(fate.request_delay).await;
                if net.is_blocked(&from, &to) {
                    net.count(|s| s.blocked += 1);
                    return;
                }
                let Some(target) = net.get(&to) else {
                    return;
                };
                let reply = target.handle(&kind, &body).await;
                drop(target);
                if fate.lose_reply {
                    net.count(|s| s.lost += 1);
                    return;
                }
                tokio::time::sleep(fate.reply_delay).await;
                if net.is_blocked(&to, &from) {
                    net.count(|s| s.blocked += 1);
                    return;
                }
                net.count(|s| s.delivered += 1);
                let _ = tx.send(reply);
            });
            match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(_)) => {
                    // Lost on the way: noticed after the detection delay, counted from now.
                    let noticed = (Instant::now() + fate.detect).min(deadline);
                    tokio::time::sleep_until(noticed).await;
                    Err("message lost".to_string())
                }
                Err(_) => Err("timeout".to_string()),
            }
        })
    }
}
