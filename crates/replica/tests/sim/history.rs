//! What the simulation observed, and the checks over it. The checks are plain functions of
//! the record, so they can be tested on made-up histories too.

use super::disk::{Take, Written};
use super::machine::set_cmd;
use replica::{Role, Status};
use std::collections::{BTreeMap, BTreeSet};
use tokio::time::Instant;

/// `SIM_TRACE=1` prints events as they happen (to follow a seed that hangs).
fn live_trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("SIM_TRACE").is_ok_and(|v| v != "0"))
}

/// How a client's write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Still being tried.
    Pending,
    /// `Replica::write` returned `Ok` on `by`.
    Acked(Ack),
    /// Errors or timeouts until the deadline: it may or may not have happened.
    Unknown(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub by: String,
    pub at_ms: u64,
    /// The term `by` reported while it was leader, right after the write returned (`None`
    /// when it no longer claimed to lead: the term is then not known for sure).
    pub term: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct WriteRec {
    pub key: String,
    pub value: String,
    pub issued_ms: u64,
    pub outcome: Outcome,
}

/// The moment the learner's site was lost: what the leader reported just before.
#[derive(Debug, Clone)]
pub struct AsyncCut {
    pub at_ms: u64,
    pub learner: String,
    pub leader: String,
    pub last_log_index: Option<u64>,
    pub matched: Option<u64>,
    /// Reported lag in entries: `last_log_index - matched`.
    pub lag_entries: u64,
    /// Milliseconds since the learner last acknowledged the leader.
    pub lag_ms: Option<u64>,
    /// Keys acknowledged to clients before the cut, with their values.
    pub acked_before: Vec<(String, String)>,
}

/// A write acknowledged under high-safety mirroring: what `Replica::wait_replicated` said about
/// the mirror, and what the mirror held right after (before anything else ran).
#[derive(Debug, Clone)]
pub struct MirrorAck {
    pub key: String,
    /// The member that acknowledged it (the principal: the leader).
    pub by: String,
    /// The other data-holding member.
    pub mirror: String,
    /// The write's log index.
    pub index: u64,
    pub at_ms: u64,
    /// `wait_replicated` returned true: the acknowledgement says the mirror holds the write
    /// (false: the mirror was silent, the principal exposed, or it stopped leading).
    pub said_held: bool,
    /// When `said_held`: did the mirror's log hold the entry (or its snapshot the write) right
    /// after? `Err` says what it held instead.
    pub held: Result<(), String>,
    /// When not `said_held`: why the principal went on exposed, as its status right after
    /// the acknowledgement tells.
    pub exposure: Option<Exposure>,
}

/// Why a write was acknowledged without the mirror (`wait_replicated` returned false), as the
/// acknowledging member's status right after tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exposure {
    /// The mirror had not acknowledged anything for `silent_ms` or more.
    Silent,
    /// The mirror had acknowledged nothing to this leader yet, which had led for `silent_ms`
    /// or more.
    NeverHeard,
    /// The mirror had acknowledged nothing to this leader yet, which had led for less than
    /// `silent_ms`: `wait_replicated` counts a mirror it has not heard from as silent from the
    /// start of the term (a new principal goes on exposed at once).
    NewLeader,
    /// The acknowledging member no longer led.
    NotLeading,
    /// The mirror had acknowledged within `silent_ms` (after `wait_replicated` returned).
    Heard,
}

/// The record of one simulation.
pub struct History {
    pub t0: Instant,
    pub writes: BTreeMap<String, WriteRec>,
    /// Members seen claiming leadership, by term.
    pub leaders: BTreeMap<u64, BTreeSet<String>>,
    /// Members that acknowledged writes while leader, by term.
    pub ack_terms: BTreeMap<u64, BTreeSet<String>>,
    /// Violations noticed while running (wrong responses, stale reads).
    pub violations: Vec<String>,
    /// Every event, with its virtual time: compared across runs of one seed.
    pub trace: Vec<String>,
    pub cut: Option<AsyncCut>,
    pub counts: BTreeMap<&'static str, u64>,
    /// The witness, when the group has one: it must never acknowledge.
    pub witness: Option<String>,
    /// Writes acknowledged under high-safety mirroring, with what the mirror held.
    pub mirror_acks: Vec<MirrorAck>,
    /// When each term's leader was first seen leading (ms).
    pub led_at: BTreeMap<u64, u64>,
    /// Exposures of a new leader that had not heard from the mirror yet are violations.
    pub strict_exposure: bool,
    /// Members seen knowing the group's membership.
    pub joined: BTreeSet<String>,
}

impl History {
    pub fn new() -> History {
        History {
            t0: Instant::now(),
            writes: BTreeMap::new(),
            leaders: BTreeMap::new(),
            ack_terms: BTreeMap::new(),
            violations: Vec::new(),
            trace: Vec::new(),
            cut: None,
            counts: BTreeMap::new(),
            witness: None,
            mirror_acks: Vec::new(),
            led_at: BTreeMap::new(),
            strict_exposure: false,
            joined: BTreeSet::new(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.t0).as_millis() as u64
    }

    pub fn event(&mut self, what: impl AsRef<str>) {
        let line = format!("{:>6} {}", self.now_ms(), what.as_ref());
        if live_trace() {
            eprintln!("{line}");
        }
        self.trace.push(line);
    }

    pub fn count(&mut self, what: &'static str) {
        *self.counts.entry(what).or_default() += 1;
    }

    pub fn violation(&mut self, what: String) {
        self.event(format!("VIOLATION {what}"));
        self.violations.push(what);
    }

    /// A member's published status (every change is seen, or at least the latest of a burst).
    pub fn observe(&mut self, name: &str, s: &Status) {
        self.count("observations");
        if !s.voters.is_empty() && !self.joined.contains(name) {
            self.joined.insert(name.to_string());
        }
        if s.role == Role::Leader {
            let set = self.leaders.entry(s.term).or_default();
            if set.insert(name.to_string()) {
                self.event(format!("leader {name} term {}", s.term));
            }
            let now = self.now_ms();
            self.led_at.entry(s.term).or_insert(now);
        }
    }

    pub fn issue(&mut self, key: &str, value: &str) {
        let rec = WriteRec {
            key: key.to_string(),
            value: value.to_string(),
            issued_ms: self.now_ms(),
            outcome: Outcome::Pending,
        };
        self.writes.insert(key.to_string(), rec);
    }

    /// `by` returned `Ok(response)` for the write of `key`; `s` is its status right after.
    pub fn ack(&mut self, key: &str, by: &str, s: &Status, response: &[u8]) {
        let term = (s.role == Role::Leader).then_some(s.term);
        if let Some(t) = term {
            self.ack_terms.entry(t).or_default().insert(by.to_string());
        }
        let at_ms = self.now_ms();
        let Some(w) = self.writes.get_mut(key) else {
            self.violation(format!("ack of a write never issued: {key}"));
            return;
        };
        w.outcome = Outcome::Acked(Ack {
            by: by.to_string(),
            at_ms,
            term,
        });
        let value = w.value.clone();
        self.event(format!("ack {key} by {by} term {term:?}"));
        // Keys are unique: the previous value is nothing, or this very value when an
        // earlier attempt of the same write was applied too.
        match serde_json::from_slice::<Option<String>>(response) {
            Ok(None) => {}
            Ok(Some(v)) if v == value => {}
            other => self.violation(format!(
                "write {key}={value} acknowledged by {by} with previous value {other:?}"
            )),
        }
    }

    /// Under high-safety mirroring, right after the ack of `key` by `by` (see [`MirrorAck`]);
    /// `s` is `by`'s status then, `silent_ms` what `wait_replicated` was given.
    #[allow(clippy::too_many_arguments)]
    pub fn mirror_ack(
        &mut self,
        key: &str,
        by: &str,
        mirror: &str,
        index: u64,
        said_held: bool,
        held: Result<(), String>,
        s: &Status,
        silent_ms: u64,
    ) {
        let exposure = (!said_held).then(|| {
            let heard = s
                .replication
                .get(&replica::node_id(mirror))
                .and_then(|p| p.last_ack_ms_ago);
            let led_ms = self
                .led_at
                .get(&s.term)
                .map(|t| self.now_ms().saturating_sub(*t));
            match heard {
                _ if s.role != Role::Leader => Exposure::NotLeading,
                Some(ms) if ms >= silent_ms => Exposure::Silent,
                Some(_) => Exposure::Heard,
                None if led_ms.is_some_and(|l| l < silent_ms) => Exposure::NewLeader,
                None => Exposure::NeverHeard,
            }
        });
        match exposure {
            None => self.count("acks held by the mirror"),
            Some(e) => {
                self.count(match e {
                    Exposure::Silent => "acks exposed: mirror silent",
                    Exposure::NeverHeard => "acks exposed: mirror never heard",
                    Exposure::NewLeader => "acks exposed: new leader, mirror not heard yet",
                    Exposure::NotLeading => "acks exposed: no longer leading",
                    Exposure::Heard => "acks exposed: mirror heard since",
                });
                self.event(format!("ack {key} by {by} exposed: {mirror} {e:?}"));
            }
        }
        if let Err(why) = &held {
            self.event(format!(
                "ack {key} by {by}: {mirror} lacks entry {index}: {why}"
            ));
        }
        self.mirror_acks.push(MirrorAck {
            key: key.to_string(),
            by: by.to_string(),
            mirror: mirror.to_string(),
            index,
            at_ms: self.now_ms(),
            said_held,
            held,
            exposure,
        });
    }

    pub fn unknown(&mut self, key: &str, why: String) {
        self.event(format!("unknown {key}: {why}"));
        if let Some(w) = self.writes.get_mut(key) {
            w.outcome = Outcome::Unknown(why);
        }
    }

    /// Keys and values acknowledged so far.
    pub fn acked(&self) -> Vec<(String, String)> {
        self.writes
            .values()
            .filter(|w| matches!(w.outcome, Outcome::Acked(_)))
            .map(|w| (w.key.clone(), w.value.clone()))
            .collect()
    }

    pub fn tally(&self) -> (usize, usize, usize) {
        let mut t = (0, 0, 0);
        for w in self.writes.values() {
            match w.outcome {
                Outcome::Acked(_) => t.0 += 1,
                Outcome::Unknown(_) => t.1 += 1,
                Outcome::Pending => t.2 += 1,
            }
        }
        t
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// What the members hold at the end.
#[derive(Debug)]
pub struct Final {
    /// Did the group converge after healing (one leader, everything applied everywhere,
    /// identical machines)? `Err` says how it did not.
    pub converged: Result<(), String>,
    /// The machines of the members that must hold everything (voters, attached learners).
    pub machines: BTreeMap<String, BTreeMap<String, String>>,
    /// The learner cut away on purpose.
    pub cut_learner: Option<CutLearner>,
    /// Under a failover cluster: the shared storage's record of ownerships taken and writes
    /// accepted.
    pub shared: Option<(Vec<Take>, Vec<Written>)>,
}

/// What the learner whose site was lost holds at the end.
#[derive(Debug, Default)]
pub struct CutLearner {
    pub machine: BTreeMap<String, String>,
    /// Its log records, as stored (commands appear in them verbatim).
    pub log: Vec<Vec<u8>>,
}

impl Default for Final {
    fn default() -> Final {
        Final {
            converged: Ok(()),
            machines: BTreeMap::new(),
            cut_learner: None,
            shared: None,
        }
    }
}

/// What async replication lost, against what was reported.
#[derive(Debug, Clone, Default)]
pub struct AsyncLoss {
    pub reported_entries: u64,
    pub reported_ms: Option<u64>,
    pub acked_before: usize,
    /// Acknowledged before the cut, not in the learner's machine.
    pub missing_from_machine: usize,
    /// ... nor in its log (what a forced failover onto it would lose).
    pub missing_from_log: usize,
}

pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() <= haystack.len() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Checks a finished simulation; returns the violations (empty: it passed) and the async loss.
///
/// - At most one member claimed leadership per term (every status a member published is seen
///   by a watcher, or the latest of a burst of them).
/// - At most one member acknowledged writes per term (the term is the acknowledging member's,
///   read right after `write` returned, counted only while it still claimed leadership).
/// - The response of every acknowledged write is the previous value: nothing, or its own
///   value when an earlier attempt was applied too (checked as they come, with linearizable
///   reads: after a read barrier, every write acknowledged before the read began is visible).
/// - The group converged after healing: one leader, every member applied its last entry, and
///   identical machines.
/// - Every acknowledged write is on every member that must hold everything (voters, attached
///   learners), with its value; nothing is there that no client wrote. Writes with an unknown
///   outcome may be present or not.
/// - Async loss: of the writes acknowledged before the learner's site was lost, those on
///   neither its machine nor its log number at most the lag (in entries) that a leader within
///   its lease reported just before. (Entries in its log but not yet applied are kept by a
///   failover onto it; how many writes its machine alone lacked is reported too.)
///
/// Under high-safety mirroring with a witness (principal, mirror and witness, the three voters):
/// - The witness never acknowledged a write (it may lead, to hand over: the convergence check
///   wants a data member leading).
/// - Every write acknowledged after `wait_replicated` said the mirror held it was in the
///   mirror's log at its index (or, purged, in its snapshot) right after the acknowledgement.
/// - With `strict_exposure`: no write was acknowledged exposed by a leader that had not heard
///   from the mirror yet and had led for less than the silence limit ([`Exposure::NewLeader`]).
/// - The convergence check compares the data-holding members only (the witness has no data),
///   and no acknowledged write is lost on them (as above).
///
/// Under a failover cluster (the members hold no data; the shared storage does):
/// - the checks on leaders and acknowledgements above; no acknowledged write lost on the
///   shared storage, nothing there nobody wrote;
/// - after healing, the group's leader owns the storage;
/// - one owner per token, and never two writers (see `disk::check`).
pub fn check(h: &History, f: &Final) -> (Vec<String>, Option<AsyncLoss>) {
    let mut v = h.violations.clone();
    // At most one leader per term.
    for (term, who) in &h.leaders {
        if who.len() > 1 {
            v.push(format!("two leaders in term {term}: {who:?}"));
        }
    }
    // At most one member acknowledged writes per term.
    for (term, who) in &h.ack_terms {
        if who.len() > 1 {
            v.push(format!(
                "writes acknowledged by more than one member in term {term}: {who:?}"
            ));
        }
    }
    // The witness never acknowledges (it leads only to hand over).
    if let Some(wit) = &h.witness {
        let acked: Vec<&str> = h
            .writes
            .values()
            .filter(|w| matches!(&w.outcome, Outcome::Acked(a) if a.by == *wit))
            .map(|w| w.key.as_str())
            .collect();
        if !acked.is_empty() {
            v.push(format!(
                "the witness {wit} acknowledged {} write(s), e.g. {:?}",
                acked.len(),
                &acked[..acked.len().min(5)]
            ));
        }
    }
    // What the acknowledgement said the mirror held, it held.
    let unheld: Vec<String> = h
        .mirror_acks
        .iter()
        .filter(|a| a.said_held)
        .filter_map(|a| {
            a.held.as_ref().err().map(|why| {
                format!(
                    "{} (entry {}, acked by {} at {} ms; {} {why})",
                    a.key, a.index, a.by, a.at_ms, a.mirror
                )
            })
        })
        .collect();
    if !unheld.is_empty() {
        v.push(format!(
            "{} write(s) acknowledged as held by the mirror that the mirror lacked: {}",
            unheld.len(),
            unheld
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // Exposed only once the mirror was silent (when asked to check it).
    let premature: Vec<String> = h
        .mirror_acks
        .iter()
        .filter(|a| h.strict_exposure && a.exposure == Some(Exposure::NewLeader))
        .map(|a| {
            format!(
                "{} (entry {}, acked by {} at {} ms)",
                a.key, a.index, a.by, a.at_ms
            )
        })
        .collect();
    if !premature.is_empty() {
        v.push(format!(
            "{} write(s) acknowledged exposed by a new leader that had not heard from the mirror \
             yet, before an election timeout of silence: {}",
            premature.len(),
            premature
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    if let Err(e) = &f.converged {
        v.push(format!("no convergence after healing: {e}"));
    }
    // Under a failover cluster: one owner per token, never two writers.
    if let Some((takes, writes)) = &f.shared {
        v.extend(super::disk::check(takes, writes));
    }
    // No acknowledged write lost; nothing nobody wrote.
    for (member, map) in &f.machines {
        let mut lost = Vec::new();
        for w in h.writes.values() {
            if let Outcome::Acked(a) = &w.outcome
                && map.get(&w.key) != Some(&w.value)
            {
                lost.push(format!(
                    "{}={} (issued at {} ms, acked by {} at {} ms in term {:?}; here {:?})",
                    w.key,
                    w.value,
                    w.issued_ms,
                    a.by,
                    a.at_ms,
                    a.term,
                    map.get(&w.key)
                ));
            }
        }
        if !lost.is_empty() {
            v.push(format!(
                "{} acknowledged write(s) lost on {member}: {}",
                lost.len(),
                lost.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let strange: Vec<String> = map
            .iter()
            .filter(|(k, val)| h.writes.get(*k).is_none_or(|w| w.value != **val))
            .map(|(k, val)| format!("{k}={val}"))
            .take(5)
            .collect();
        if !strange.is_empty() {
            v.push(format!("values nobody wrote on {member}: {strange:?}"));
        }
    }
    // Async loss within the reported lag.
    let mut loss = None;
    if let (Some(cut), Some(CutLearner { machine: map, log })) = (&h.cut, &f.cut_learner) {
        let missing: Vec<&(String, String)> = cut
            .acked_before
            .iter()
            .filter(|(k, val)| map.get(k) != Some(val))
            .collect();
        let not_logged: Vec<&(String, String)> = missing
            .iter()
            .copied()
            .filter(|(k, val)| {
                let cmd = set_cmd(k, val);
                !log.iter().any(|rec| contains(rec, &cmd))
            })
            .collect();
        let l = AsyncLoss {
            reported_entries: cut.lag_entries,
            reported_ms: cut.lag_ms,
            acked_before: cut.acked_before.len(),
            missing_from_machine: missing.len(),
            missing_from_log: not_logged.len(),
        };
        if l.missing_from_log as u64 > cut.lag_entries {
            v.push(format!(
                "async loss beyond the reported lag: {} write(s) acknowledged before the cut at {} ms \
                 are on neither {}'s machine nor its log, but {} reported a lag of {} entries \
                 (last log {:?}, matched {:?}, {:?} ms); e.g. {:?}",
                l.missing_from_log,
                cut.at_ms,
                cut.learner,
                cut.leader,
                cut.lag_entries,
                cut.last_log_index,
                cut.matched,
                cut.lag_ms,
                not_logged.iter().take(3).collect::<Vec<_>>()
            ));
        }
        loss = Some(l);
    }
    (v, loss)
}
