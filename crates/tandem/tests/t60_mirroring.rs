//! Database mirroring with real server processes: principal `s1`, mirror `s2` and (with
//! high safety) witness `s3`, a front end using the store through its listener, SIP
//! registrations as the load, `kill -9` and SIGSTOP — counting what was acknowledged and what
//! survived.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

mod common;

use nix::sys::signal::Signal;
use std::time::{Duration, Instant};
use testkit::replicated::{ReplicatedLab, kill_under_load, summary};
use testkit::{Options, RegisterLoad, mirroring_topology};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");
const USERS: usize = 4000;

fn start(name: &str, safety: &str, with_witness: bool) -> ReplicatedLab {
    ReplicatedLab::start(
        EXE.as_ref(),
        TMP,
        name,
        mirroring_topology(safety, with_witness, &Options::default()),
        USERS,
    )
}

fn row<'a>(status: &'a serde_json::Value, server: &str) -> &'a serde_json::Value {
    status["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["server"] == server)
        .unwrap_or_else(|| panic!("no row for {server} in {status}"))
}

/// High safety with a witness: the roles are principal, mirror and witness, the session is
/// synchronized, and the witness holds no database. `kill -9` of the principal under load:
/// the mirror takes over by itself and every acknowledged registration is still bound.
#[test]
fn high_safety_with_a_witness_fails_over_by_itself_and_loses_nothing() {
    let m = start("mirror_kill9", "high-safety", true);
    let st = m.wait_status("a synchronized session", |s| {
        s["mirroring"]["state"] == "synchronized"
    });
    assert_eq!(st["primary"], "s1", "{st}");
    assert_eq!(row(&st, "s1")["role"], "principal");
    assert_eq!(row(&st, "s2")["role"], "mirror");
    assert_eq!(row(&st, "s3")["role"], "witness");
    assert_eq!(st["mirroring"]["safety"], "high-safety");
    assert_eq!(st["mirroring"]["exposed"], false);
    let witness_db = m.lab.data.join("s3/stores/store/store.sqlite");
    assert!(!witness_db.exists(), "the witness holds a database");

    let run = kill_under_load(&m, "s1", USERS);
    let st = m.wait_primary("the mirror as principal", |p| p == "s2");
    assert_eq!(row(&st, "s2")["role"], "principal", "{st}");
    let lost = m.lost(&run.records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    assert!(run.acked >= 450, "{} acknowledged", run.acked);
    assert!(!witness_db.exists(), "the witness holds a database");
}

/// High safety: with the mirror paused, the principal goes on with the witness and says it
/// is exposed (the session suspended); with the mirror back, the session is synchronized
/// again and nothing acknowledged meanwhile is missing after the principal is killed.
#[test]
fn a_lost_mirror_exposes_the_principal_until_it_is_back() {
    let m = start("mirror_exposed", "high-safety", true);
    m.wait_status("a synchronized session", |s| {
        s["mirroring"]["state"] == "synchronized"
    });
    m.signal("s2", Signal::SIGSTOP);
    let load = RegisterLoad::start(m.sip, 4, USERS, "pw");
    assert!(
        load.wait_for(200, Duration::from_secs(60)),
        "the principal stopped serving without its mirror"
    );
    let st = m.wait_status("an exposed principal", |s| {
        s["mirroring"]["state"] == "suspended" && s["mirroring"]["exposed"] == true
    });
    assert_eq!(st["primary"], "s1", "{st}");
    m.signal("s2", Signal::SIGCONT);
    let n = load.records.lock().unwrap().len();
    assert!(load.wait_for(n + 100, Duration::from_secs(60)));
    m.wait_status("a synchronized session again", |s| {
        s["mirroring"]["state"] == "synchronized" && s["mirroring"]["exposed"] == false
    });
    let n = load.records.lock().unwrap().len();
    assert!(load.wait_for(n + 100, Duration::from_secs(60)));
    let records = load.stop();
    // What the principal acknowledged while exposed is on the mirror now: the mirror serves
    // every acknowledged registration once the principal is gone.
    m.signal("s1", Signal::SIGKILL);
    m.wait_primary("the mirror as principal", |p| p == "s2");
    let lost = m.lost(&records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
}

/// High safety without a witness: a commit waits for the connected mirror. With the mirror
/// paused for less than it takes to count as lost, no registration is acknowledged; the
/// principal is then killed, and forcing service on the mirror (failover by hand: there is
/// no witness) states no loss — and every acknowledged registration is bound.
#[test]
fn high_safety_without_a_witness_acknowledges_only_what_the_mirror_holds() {
    let m = start("mirror_nowitness", "high-safety", false);
    let st = m.wait_status("a synchronized session", |s| {
        s["mirroring"]["state"] == "synchronized"
    });
    assert!(st["mirroring"]["witness"].is_null(), "{st}");
    let load = RegisterLoad::start(m.sip, 4, USERS, "pw");
    assert!(load.wait_for(300, Duration::from_secs(60)));
    m.signal("s2", Signal::SIGSTOP);
    let acked = |load: &RegisterLoad| {
        load.records
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.status == 200)
            .count()
    };
    let before = acked(&load);
    // Shorter than the 500 ms after which a silent mirror counts as lost.
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_millis(300) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let during = acked(&load) - before;
    m.signal("s1", Signal::SIGKILL);
    m.signal("s2", Signal::SIGCONT);
    let records = load.stop();
    // Requests the mirror had already confirmed may complete as it stops: one per client.
    assert!(
        during <= 4,
        "{during} registrations acknowledged while the mirror was paused"
    );
    let out = m.cli(&["store", "force-service", "store", "--to", "s2", "--yes"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{text}");
    m.wait_primary("the mirror", |p| p == "s2");
    let lost = m.lost(&records);
    assert!(
        lost.is_empty(),
        "{} acknowledged registrations lost: {lost:?}",
        lost.len()
    );
}

/// High performance: commits do not wait for the mirror, which falls behind while paused;
/// after the principal is lost, forcing service on the mirror states a loss, and the
/// registrations actually lost are no more than the lag status reported.
#[test]
fn high_performance_forced_service_loss_is_bounded_by_the_reported_lag() {
    let m = start("mirror_highperf", "high-performance", false);
    let st = m.wait_primary("the principal", |p| p == "s1");
    assert_eq!(st["mirroring"]["safety"], "high-performance", "{st}");
    assert_eq!(st["mirroring"]["exposed"], true, "{st}");
    common::forced_service_after_site_loss(&m, "s2", &["s1"], USERS);
}

/// Switching high safety and high performance, and taking the witness out and back in, while
/// the store serves: no request fails, status follows each step, and at the end — high
/// safety with the witness again — `kill -9` of the principal fails over by itself with
/// nothing acknowledged lost.
#[test]
fn safety_and_witness_change_under_load_with_no_failed_request() {
    let m = start("mirror_switch", "high-safety", true);
    m.wait_status("a synchronized session", |s| {
        s["mirroring"]["state"] == "synchronized"
    });
    let load = RegisterLoad::start(m.sip, 4, USERS, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    let step = |args: &[&str], check: &dyn Fn(&serde_json::Value) -> bool| {
        let mut full = vec!["store"];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--json"]);
        let out = m.cli(&full);
        assert!(
            out.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        m.wait_status(&format!("the state after {args:?}"), check);
        let n = load.records.lock().unwrap().len();
        assert!(
            load.wait_for(n + 50, Duration::from_secs(60)),
            "the load stalled after {args:?}"
        );
    };
    step(&["remove-witness", "store"], &|s| {
        s["mirroring"]["witness"].is_null() && row(s, "s2")["commit"] == "async"
    });
    step(&["set-safety", "store", "high-performance"], &|s| {
        s["mirroring"]["safety"] == "high-performance" && s["mirroring"]["exposed"] == true
    });
    // A witness in high performance is refused, and changes nothing.
    let out = m.cli(&["store", "add-witness", "store"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("witness serves high safety only"), "{err}");
    assert_eq!(m.status()["mirroring"]["safety"], "high-performance");
    step(&["set-safety", "store", "high-safety"], &|s| {
        s["mirroring"]["safety"] == "high-safety" && s["mirroring"]["exposed"] == false
    });
    step(&["add-witness", "store"], &|s| {
        s["mirroring"]["witness"] == "s3" && row(s, "s2")["commit"] == "sync"
    });
    m.signal("s1", Signal::SIGKILL);
    let n = load.records.lock().unwrap().len();
    assert!(
        load.wait_for(n + 100, Duration::from_secs(60)),
        "no automatic failover after the witness came back"
    );
    let records = load.stop();
    let failed: Vec<_> = records.iter().filter(|r| r.status != 200).collect();
    m.wait_primary("the mirror", |p| p == "s2");
    let lost = m.lost(&records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    // The client rides through the switches and the kill: no request fails.
    let (acked, _, worst, _) = summary(&records, Instant::now());
    eprintln!(
        "{acked} acknowledged, {} failed, slowest {worst:?}",
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
}

/// Without a witness the mirror is a learner; `store failover` switches roles by hand with
/// no loss: under load, the mirror becomes principal and the old principal its mirror (a
/// learner again), then back in high performance. No request fails, nothing acknowledged is
/// lost, and each switch is recorded as a planned failover with no loss.
#[test]
fn planned_failover_without_a_witness_switches_roles_under_load() {
    let m = start("mirror_switch_roles", "high-safety", false);
    m.wait_status("a synchronized session", |s| {
        s["mirroring"]["state"] == "synchronized"
    });
    let load = RegisterLoad::start(m.sip, 4, USERS, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    let switch = |to: &str, from: &str| {
        let out = m.cli(&["store", "failover", "store", "--to", to, "--json"]);
        assert!(
            out.status.success(),
            "failover to {to}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let st = m.wait_status(&format!("{to} principal, {from} its learner mirror"), |s| {
            s["primary"] == to
                && row(s, to)["role"] == "principal"
                && row(s, from)["role"] == "mirror"
                && row(s, from)["commit"] == "async"
        });
        let n = load.records.lock().unwrap().len();
        assert!(
            load.wait_for(n + 100, Duration::from_secs(60)),
            "the load stalled after the failover to {to}"
        );
        st
    };
    switch("s2", "s1");
    m.wait_status("a synchronized session under s2", |s| {
        s["mirroring"]["state"] == "synchronized"
    });
    let out = m.cli(&["store", "set-safety", "store", "high-performance"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = switch("s1", "s2");
    assert_eq!(st["mirroring"]["safety"], "high-performance", "{st}");
    let records = load.stop();
    let failed: Vec<_> = records.iter().filter(|r| r.status != 200).collect();
    assert!(
        failed.is_empty(),
        "failed requests: {:?}",
        &failed[..failed.len().min(5)]
    );
    let lost = m.lost(&records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    let planned = |s: &serde_json::Value| -> Vec<serde_json::Value> {
        s["failovers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["kind"] == "Planned")
            .cloned()
            .collect()
    };
    let st = m.wait_status("both switches recorded", |s| planned(s).len() >= 2);
    let planned = planned(&st);
    assert!(planned.iter().all(|f| f["lost_transactions"] == 0), "{st}");
}

/// The witness trap's other side: with the mirror paused, principal and witness commit
/// entries the mirror lacks; then the principal dies. The mirror cannot win an election
/// without them (the witness refuses its vote) — so the witness wins, hands the mirror what
/// it lacks, and steps aside: the mirror serves, nothing acknowledged is lost.
#[test]
fn a_mirror_behind_the_witness_still_takes_over() {
    let m = start("mirror_behind", "high-safety", true);
    m.wait_status("a synchronized session", |s| {
        s["mirroring"]["state"] == "synchronized"
    });
    let load = RegisterLoad::start(m.sip, 4, USERS, "pw");
    assert!(load.wait_for(150, Duration::from_secs(60)));
    m.signal("s2", Signal::SIGSTOP);
    // The fault's length: writes reach principal and witness, not the mirror (shorter than
    // the 500 ms after which the principal would count the mirror as lost).
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_millis(200) {
        std::thread::sleep(Duration::from_millis(10));
    }
    m.signal("s1", Signal::SIGKILL);
    m.signal("s2", Signal::SIGCONT);
    let n = load.records.lock().unwrap().len();
    assert!(
        load.wait_for(n + 100, Duration::from_secs(60)),
        "the mirror never took over"
    );
    let records = load.stop();
    let st = m.wait_primary("the mirror", |p| p == "s2");
    assert_eq!(row(&st, "s3")["role"], "witness", "{st}");
    let lost = m.lost(&records);
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
}
