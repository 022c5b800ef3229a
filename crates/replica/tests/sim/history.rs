//! What the simulation observed, and the checks over it. The checks are plain functions of
//! the record, so they can be tested on made-up histories too.

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
        if s.role == Role::Leader {
            let set = self.leaders.entry(s.term).or_default();
            if set.insert(name.to_string()) {
                self.event(format!("leader {name} term {}", s.term));
            }
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

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
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
    if let Err(e) = &f.converged {
        v.push(format!("no convergence after healing: {e}"));
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
