//! Availability groups with real server processes: a front end on a store replicated over
//! three servers, SIP registrations as the load, `kill -9`, SIGSTOP/SIGCONT, planned failover,
//! membership changes and forced service — counting what was acknowledged and what survived.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use nix::sys::signal::Signal;
use std::collections::HashSet;
use std::time::{Duration, Instant};
use testkit::replicated::{ReplicatedLab, kill_under_load, summary};
use testkit::{AgReplica, Options, RegisterLoad, ag_topology};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");
const SYNC: AgReplica = AgReplica {
    sync: true,
    automatic: true,
    readable: false,
};
/// A sync replica that fails over only when told (two voters cannot fail over by themselves).
const SYNC_MANUAL: AgReplica = AgReplica {
    sync: true,
    automatic: false,
    readable: false,
};
const ASYNC: AgReplica = AgReplica {
    sync: false,
    automatic: false,
    readable: true,
};
const USERS: usize = 4000;

fn start(name: &str, replicas: &[AgReplica]) -> ReplicatedLab {
    ReplicatedLab::start(
        EXE.as_ref(),
        TMP,
        name,
        ag_topology(replicas, &Options::default()),
        USERS,
    )
}

/// `kill -9` of the primary under registration load: every REGISTER that got a 200 is still
/// bound afterwards (synchronous replicas lose nothing acknowledged), service resumes by
/// itself, and the new primary records the failover with RPO 0 and a measured RTO.
#[test]
fn kill_9_of_the_primary_loses_no_acknowledged_registration() {
    let ag = start("ag_kill9", &[SYNC, SYNC, SYNC]);
    let first = ag.wait_primary("initial", |_| true);
    let old = first["primary"].as_str().unwrap().to_string();
    let run = kill_under_load(&ag, &old, USERS);
    ag.wait_primary("a new one", |p| p != old);
    let lost = ag.lost(&run.records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    assert!(run.acked >= 450, "{} acknowledged", run.acked);
    // The failover is on record, measured.
    let end = Instant::now() + Duration::from_secs(20);
    let ev = loop {
        let st = ag.status();
        if let Some(ev) = st["failovers"].as_array().and_then(|a| a.first()).cloned()
            && ev["first_write_ms"].as_u64().unwrap_or(0) > 0
        {
            break ev;
        }
        assert!(Instant::now() < end, "no failover recorded: {st}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ev["kind"], "Automatic");
    assert_eq!(ev["from_server"], old.as_str());
    assert_eq!(ev["lost_transactions"], 0);
    let rto = ev["first_write_ms"].as_u64().unwrap() - ev["detected_ms"].as_u64().unwrap();
    eprintln!(
        "recorded failover: RTO {rto} ms, RPO {} transactions",
        ev["lost_transactions"]
    );
}

/// A primary paused with SIGSTOP is replaced; resumed with SIGCONT, it acknowledges no write
/// (it answers "not the primary" or "unavailable"), and every registration acknowledged while
/// it slept or woke is bound.
#[test]
fn a_paused_primary_acknowledges_nothing_after_it_wakes() {
    let ag = start("ag_sigstop", &[SYNC, SYNC, SYNC]);
    let old = ag.wait_primary("initial", |_| true)["primary"]
        .as_str()
        .unwrap()
        .to_string();
    let load = RegisterLoad::start(ag.sip, 4, USERS, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    ag.signal(&old, Signal::SIGSTOP);
    let paused_at = Instant::now();
    ag.wait_primary("a new one", |p| p != old);
    let replaced_after = paused_at.elapsed();
    ag.signal(&old, Signal::SIGCONT);
    // Straight to the old primary, right after it wakes: no acknowledgment.
    let mut answers = Vec::new();
    for reply in common::direct_writes(&ag, &old, 20).into_iter().flatten() {
        assert!(
            reply.is_err(),
            "the resumed old primary acknowledged a write: {reply:?}"
        );
        answers.push(format!("{:?}", reply.unwrap_err()));
    }
    let done = load.records.lock().unwrap().len();
    assert!(load.wait_for(done + 100, Duration::from_secs(60)));
    let records = load.stop();
    eprintln!(
        "replaced after {replaced_after:?}; the old primary answered: {:?}",
        answers.iter().collect::<HashSet<_>>()
    );
    assert!(
        !answers.is_empty(),
        "the old primary never answered after SIGCONT"
    );
    let lost = ag.lost(&records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
}

/// Planned failover, and membership changes, under load: no request fails.
#[test]
fn planned_failover_and_membership_changes_fail_no_request() {
    let ag = start("ag_planned", &[SYNC, SYNC_MANUAL, ASYNC]);
    let old = ag.wait_primary("initial", |_| true)["primary"]
        .as_str()
        .unwrap()
        .to_string();
    let load = RegisterLoad::start(ag.sip, 4, USERS, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    let out = ag.cli(&["store", "failover", "store", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let new = st["primary"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let step = |args: &[&str]| {
        let out = ag.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n = load.records.lock().unwrap().len();
        assert!(
            load.wait_for(n + 50, Duration::from_secs(60)),
            "the load stalled after {args:?}"
        );
    };
    step(&[
        "store",
        "set-commit",
        "store",
        "--server",
        "s3",
        "--commit",
        "sync",
    ]);
    step(&[
        "store",
        "set-commit",
        "store",
        "--server",
        "s3",
        "--commit",
        "async",
    ]);
    step(&["store", "remove-replica", "store", "--server", "s3"]);
    step(&[
        "store",
        "add-replica",
        "store",
        "--server",
        "s3",
        "--commit",
        "async",
    ]);
    let records = load.stop();
    let (acked, failed, worst, _) = summary(&records, Instant::now());
    eprintln!(
        "planned failover {old} -> {new} and membership changes: {acked} acknowledged, {failed} failed, slowest {worst:?}"
    );
    assert_eq!(
        failed,
        0,
        "requests failed: {:?}",
        records
            .iter()
            .filter(|r| r.status != 200)
            .take(5)
            .collect::<Vec<_>>()
    );
    let st = ag.status();
    let s3 = st["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["server"] == "s3")
        .unwrap();
    assert_eq!(s3["commit"], "async");
    let planned = st["failovers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "Planned");
    assert!(planned.is_some(), "the planned failover is on record: {st}");
    // The documented JSON keys of `store status`.
    for r in st["replicas"].as_array().unwrap() {
        for key in [
            "server",
            "role",
            "commit",
            "synchronized",
            "lag_ms",
            "healthy",
        ] {
            assert!(!r[key].is_null(), "{key} missing in {r}");
        }
    }
}

/// Forced service on an asynchronous replica that fell behind: the tool states the loss it
/// knows, and the transactions actually lost are no more than the lag `store status` reported
/// before the primary's site was lost.
#[test]
fn forced_service_loss_is_bounded_by_the_reported_lag() {
    let ag = start("ag_force", &[SYNC, SYNC_MANUAL, ASYNC]);
    ag.wait_primary("initial", |p| p == "s1");
    // The async replica falls behind; then the site of both sync replicas is lost.
    common::forced_service_after_site_loss(&ag, "s3", &["s1", "s2"], USERS);
}
