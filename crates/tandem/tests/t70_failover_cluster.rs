//! Failover clusters with real server processes: nodes `s1`…`s3` share one database in a
//! directory, a front end uses the store through its listener, SIP registrations are the
//! load; `kill -9` and SIGSTOP/SIGCONT of the owner — counting what was acknowledged and what
//! survived, and what a woken old owner still manages to write (nothing).

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use testkit::replicated::{ReplicatedLab, kill_under_load};
use testkit::{Options, RegisterLoad, cluster_topology, test_dir};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");
const USERS: usize = 4000;

fn start(name: &str) -> ReplicatedLab {
    let shared = test_dir(TMP, &format!("{name}-shared"));
    ReplicatedLab::start(
        EXE.as_ref(),
        TMP,
        name,
        cluster_topology(3, false, &shared, &Options::default()),
        USERS,
    )
}

fn owner(lab: &ReplicatedLab) -> String {
    let st = lab.wait_status("an owner", |s| {
        s["replicas"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["role"] == "owner"))
    });
    st["primary"].as_str().unwrap().to_string()
}

/// `kill -9` of the owner under load: another node takes the storage over by itself, every
/// acknowledged registration is there, and the failover is recorded with its fencing token.
#[test]
fn kill_9_of_the_owner_loses_nothing_and_another_node_takes_over() {
    let c = start("fc_kill9");
    let old = owner(&c);
    let run = kill_under_load(&c, &old, USERS);
    c.wait_primary("a new owner", |p| p != old);
    let lost = c.lost(&run.records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    let st = c.wait_status("the failover on record", |s| {
        s["failovers"]
            .as_array()
            .and_then(|a| a.first())
            .is_some_and(|f| f["first_write_ms"].as_u64().unwrap_or(0) > 0)
    });
    let ev = &st["failovers"][0];
    assert_eq!(ev["kind"], "Automatic", "{ev}");
    assert_eq!(ev["from_server"], old.as_str(), "{ev}");
    assert_eq!(ev["lost_transactions"], 0, "{ev}");
    assert_eq!(
        ev["term"], st["term"],
        "the record names the fencing token: {st}"
    );
}

/// An owner paused with SIGSTOP loses the storage to another node; resumed with SIGCONT, it
/// acknowledges no write (the writes it had queued meet the newer fencing token), and every
/// acknowledged registration is there.
#[test]
fn a_paused_owner_never_writes_after_a_new_owner_took_the_storage() {
    let c = start("fc_sigstop");
    let old = owner(&c);
    let load = RegisterLoad::start(c.sip, 4, USERS, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    c.signal(&old, Signal::SIGSTOP);
    let paused_at = Instant::now();
    c.wait_primary("a new owner", |p| p != old);
    let replaced_after = paused_at.elapsed();
    c.signal(&old, Signal::SIGCONT);
    let mut answers = Vec::new();
    for reply in common::direct_writes(&c, &old, 20).into_iter().flatten() {
        assert!(
            reply.is_err(),
            "the resumed old owner acknowledged a write: {reply:?}"
        );
        answers.push(format!("{:?}", reply.unwrap_err()));
    }
    assert!(
        !answers.is_empty(),
        "the old owner never answered after SIGCONT"
    );
    let done = load.records.lock().unwrap().len();
    assert!(load.wait_for(done + 100, Duration::from_secs(60)));
    let records = load.stop();
    eprintln!(
        "owner {old} replaced after {replaced_after:?}; then it answered {:?}",
        answers.first()
    );
    let lost = c.lost(&records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    // None of the direct writes reached the storage.
    let (code, body) = testkit::admin_call(&c.admin, Some(&c.token), "GET", "/api/v1/users", None);
    assert_eq!(code, 200, "{body}");
    let users = body.as_array().unwrap();
    assert!(users.len() >= USERS, "{} users", users.len());
    assert!(
        !users
            .iter()
            .any(|u| u["aor"].as_str().is_some_and(|a| a.contains("stale"))),
        "a write of the old owner is stored"
    );
}
