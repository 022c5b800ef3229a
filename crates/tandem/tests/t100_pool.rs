//! Front-end pools with real server processes: users' registrations, presence and
//! subscriptions in routing groups replicated on three servers, clients on any server, and
//! `kill -9` of a server under load — counting what was acknowledged and what survived.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use sip::Method;
use std::time::{Duration, Instant};
use testkit::DOMAIN;
use testkit::pool::{PoolLab, PoolLoad, StoreOn, lost};
use testkit::ua::Ua;

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// Every group of the pool has a primary that answers, as `via` sees it.
fn all_serving(st: &serde_json::Value) -> bool {
    st["groups"]
        .as_array()
        .is_some_and(|g| !g.is_empty() && g.iter().all(|g| g["serving"] == true))
}

/// A MESSAGE from a client on fe1 reaches a client whose TCP connection is on fe3; a watcher
/// on fe2 hears of a publication made through fe1; the pool status shows every group with a
/// primary and two secondaries, primaries spread over the servers.
#[test]
fn any_server_serves_every_user_of_the_pool() {
    let pool = PoolLab::start(EXE.as_ref(), TMP, "pool_any_server", 3, 6, 20);
    let st = pool.wait_status("fe1", "a healthy pool", |s| s["state"] == "healthy");
    assert!(all_serving(&st), "{st}");
    for g in st["groups"].as_array().unwrap() {
        assert_eq!(g["secondaries"].as_array().unwrap().len(), 2, "{g}");
    }
    for s in st["servers"].as_array().unwrap() {
        assert_eq!(
            s["primaries"], 2,
            "each of 3 servers leads 2 of 6 groups: {st}"
        );
    }

    let mut alice = Ua::tcp(pool.sip("fe1"), "user0001", "pw", DOMAIN);
    let mut bob = Ua::tcp(pool.sip("fe3"), "user0002", "pw", DOMAIN);
    let mut carol = Ua::udp(pool.sip("fe2"), "user0003", "pw", DOMAIN);
    assert_eq!(alice.register(600).status, 200);
    assert_eq!(bob.register(600).status, 200);
    assert_eq!(carol.register(600).status, 200);
    // A password changed through fe1 is in force on fe3 at once, although fe3 has just
    // authenticated bob with the old one (its cached copy is forgotten, not aged out).
    let (code, body) = testkit::admin_call(
        &pool.admin("fe1"),
        Some(&pool.token),
        "PUT",
        "/api/v1/users/user0002/password",
        Some(serde_json::json!({"password": "new-pw"})),
    );
    assert_eq!(code, 204, "{body}");
    let mut old = Ua::udp(pool.sip("fe3"), "user0002", "pw", DOMAIN);
    assert_ne!(
        old.register(600).status,
        200,
        "the old password still works on fe3"
    );
    let mut renewed = Ua::udp(pool.sip("fe3"), "user0002", "new-pw", DOMAIN);
    assert_eq!(renewed.register(600).status, 200);
    assert_eq!(renewed.register(0).status, 200);
    // Bob's binding is in his group, whichever server reads it.
    for via in ["fe1", "fe2", "fe3"] {
        assert_eq!(
            pool.contacts(via, "user0002").len(),
            1,
            "read through {via}"
        );
    }

    // fe1 → bob's group → bob's connection, held by fe3.
    let sender = std::thread::spawn(move || {
        let resp = alice.message("user0002", "hello across the pool");
        (resp.status, alice)
    });
    let msg = bob
        .expect_request(Method::Message, Duration::from_secs(10))
        .expect("bob gets the MESSAGE over his TCP connection to fe3");
    assert_eq!(&msg.body[..], b"hello across the pool");
    bob.respond(&msg, 200);
    let (status, mut alice) = sender.join().unwrap();
    assert_eq!(status, 200, "alice hears bob's 200");

    // Carol watches alice through fe2; alice publishes through fe1.
    let sub = carol.subscribe("user0001", "watch-alice@test", None, 600);
    assert_eq!(sub.status, 200);
    let first = carol
        .expect_request(Method::Notify, Duration::from_secs(10))
        .expect("the first NOTIFY");
    carol.respond(&first, 200);
    assert_eq!(alice.publish(Some("in the pool"), None, 600).status, 200);
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let n = carol
            .expect_request(
                Method::Notify,
                end.saturating_duration_since(Instant::now()),
            )
            .expect("a NOTIFY with alice's note");
        carol.respond(&n, 200);
        if String::from_utf8_lossy(&n.body).contains("in the pool") {
            break;
        }
    }
    let (pubs, watchers) = pool.presence("fe3", "user0001");
    assert_eq!(
        (pubs.len(), watchers.len()),
        (1, 1),
        "alice's group holds both"
    );
}

/// `kill -9` of one of three servers under load from clients spread over all three: every
/// acknowledged registration, publication and subscription is still held, clients of the
/// dead server carry on through the others, and every group has a primary again.
#[test]
fn kill_9_of_one_server_loses_nothing_acknowledged() {
    const USERS: usize = 3000;
    let pool = PoolLab::start(EXE.as_ref(), TMP, "pool_kill9", 3, 6, USERS);
    pool.wait_status("fe1", "every group serving", all_serving);
    let servers = ["fe1", "fe2", "fe3"].map(|s| pool.sip(s)).to_vec();
    let load = PoolLoad::start(servers, 6, USERS);
    assert!(
        load.wait_for(300, Duration::from_secs(60)),
        "the load did not start"
    );
    let killed_at = Instant::now();
    pool.signal("fe2", nix::sys::signal::Signal::SIGKILL);
    let st = pool.wait_status("fe1", "every group serving without fe2", all_serving);
    let recovered = killed_at.elapsed();
    let before = load.done();
    assert!(
        load.wait_for(before + 600, Duration::from_secs(90)),
        "the load did not go on after the kill"
    );
    let ops = load.stop();
    let acked = ops.iter().filter(|o| o.status == 200).count();
    let after: Vec<_> = ops.iter().filter(|o| o.sent >= killed_at).collect();
    let failed_after = after.iter().filter(|o| o.status != 200).count();
    eprintln!(
        "kill -9 of fe2: {acked} acknowledged of {} requests; after the kill {failed_after} of {} \
         attempts failed (each retried on the next server); every group serving again after {recovered:?}",
        ops.len(),
        after.len()
    );
    assert_eq!(st["state"], "degraded", "{st}");
    let lost = lost(&pool, "fe1", &ops);
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:?}");
    assert!(acked >= 900, "{acked} acknowledged");
    // Each group that lost its primary recorded the failover, measured.
    let ms = |f: &serde_json::Value, k: &str| f[k].as_u64().unwrap_or(0);
    for g in st["groups"].as_array().unwrap() {
        let f = &g["last_failover"];
        if f.is_object() {
            eprintln!(
                "group {}: {} -> {}, detected->decided {} ms, detected->first write {} ms, {} lost",
                g["id"],
                f["from_server"],
                f["to_server"],
                ms(f, "decided_ms").saturating_sub(ms(f, "detected_ms")),
                ms(f, "first_write_ms").saturating_sub(ms(f, "detected_ms")),
                f["lost_transactions"]
            );
            assert_eq!(f["lost_transactions"], 0, "{f}");
        }
    }
    // No change failed on every server: each was acknowledged by one, or its client was
    // still trying others when the load stopped.
    let users: std::collections::BTreeSet<_> = ops.iter().map(|o| &o.user).collect();
    for user in users {
        for m in ["REGISTER", "PUBLISH", "SUBSCRIBE"] {
            let tries: Vec<_> = ops
                .iter()
                .filter(|o| &o.user == user && o.method == m)
                .collect();
            let since_kill: Vec<_> = tries
                .iter()
                .map(|o| {
                    let at = |t: Instant| {
                        t.saturating_duration_since(killed_at).as_millis() as i64
                            - killed_at.saturating_duration_since(t).as_millis() as i64
                    };
                    (o.server.port(), o.status, at(o.sent), at(o.done))
                })
                .collect();
            assert!(
                tries.is_empty() || tries.iter().any(|o| o.status == 200) || tries.len() < 3,
                "{user}: {m} failed on every server (port, status, sent and done in ms from \
                 the kill): {since_kill:?}"
            );
        }
    }
}

/// Waits up to 30 s for `cond`.
fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < end, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A rolling restart of all three servers, each drained first (`tandem server drain`), under
/// load from clients that a dispatcher sends to the servers that answer OPTIONS: no request
/// fails and nothing acknowledged is lost.
#[test]
fn a_rolling_restart_with_drain_fails_no_request() {
    const USERS: usize = 3000;
    let pool = PoolLab::start(EXE.as_ref(), TMP, "pool_rolling", 3, 6, USERS);
    pool.wait_status("fe1", "every group serving", all_serving);
    let names = ["fe1", "fe2", "fe3"];
    let load = PoolLoad::start_dispatched(names.map(|s| pool.sip(s)).to_vec(), 4, USERS);
    assert!(
        load.wait_for(150, Duration::from_secs(60)),
        "the load did not start"
    );
    for (i, name) in names.iter().enumerate() {
        let other = names[(i + 1) % names.len()];
        pool.wait_status(
            other,
            &format!("a healthy pool before draining {name}"),
            |s| s["state"] == "healthy",
        );
        let out = pool.cli(name, &["server", "drain", name, "--json"]);
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["still_primary"], 0, "{report}");
        assert_eq!(report["failed"], serde_json::json!([]), "{report}");
        let st = pool.status(other);
        let leads = st["servers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["server"] == *name)
            .unwrap()["primaries"]
            .clone();
        assert_eq!(leads, 0, "{name} leads no group once drained: {st}");
        wait_until(&format!("the dispatcher takes {name} out"), || {
            !load.is_live(i)
        });
        let done = load.done();
        pool.signal(name, nix::sys::signal::Signal::SIGTERM);
        pool.wait_exit(name);
        pool.restart(name);
        wait_until(&format!("the dispatcher takes {name} back"), || {
            load.is_live(i)
        });
        assert!(
            load.wait_for(done + 100, Duration::from_secs(60)),
            "the load did not go on after the restart of {name}"
        );
    }
    pool.wait_status("fe1", "a healthy pool after the rolling restart", |s| {
        s["state"] == "healthy"
    });
    let notifies = load.notifies.clone();
    let ops = load.stop();
    let failed: Vec<_> = ops.iter().filter(|o| o.status != 200).collect();
    eprintln!(
        "rolling restart: {} requests, {} failed, {} NOTIFYs answered",
        ops.len(),
        failed.len(),
        notifies.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert!(failed.is_empty(), "failed requests: {failed:?}");
    let lost = lost(&pool, "fe1", &ops);
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:?}");
}

/// Two servers drained, one after the other, for maintenance: the second hands its groups
/// to the one server not draining, never back to the first, so every group ends on fe3 and
/// neither drained server is primary of any when they stop.
#[test]
fn a_second_drain_hands_groups_to_a_server_not_draining() {
    let pool = PoolLab::start(EXE.as_ref(), TMP, "pool_two_drains", 3, 6, 30);
    pool.wait_status("fe3", "every group serving", all_serving);
    for name in ["fe1", "fe2"] {
        let out = pool.cli(name, &["server", "drain", name, "--json"]);
        assert!(out.status.success(), "{out:?}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["still_primary"], 0, "{report}");
        assert_eq!(report["failed"], serde_json::json!([]), "{report}");
    }
    let st = pool.wait_status("fe3", "every group serving after both drains", all_serving);
    let primaries: Vec<&serde_json::Value> = st["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| &g["primary"])
        .collect();
    assert!(
        primaries.iter().all(|p| *p == "fe3"),
        "every group's primary is fe3, the server not draining: {st}"
    );
}

/// `kill -9` of two of three servers stops every group (each has two of its three replicas on
/// them) and the pool reports `down`. `pool reset-group` states what the surviving replica
/// lacks and changes nothing without `--accept-data-loss`; with it the group serves again
/// from fe1 alone, with what was acknowledged before; once fe2 is back, the group's primary
/// adds fe2's old replica again by itself, reseeded from fe1.
#[test]
fn reset_group_recovers_a_group_that_lost_its_majority() {
    // The pool's store on a back-end server: the users can still sign in once their group is
    // back (a store on the pool's servers would have lost its majority too).
    let pool = PoolLab::start_with(EXE.as_ref(), TMP, "pool_reset", 3, 3, 30, StoreOn::Backend);
    pool.wait_status("fe1", "a healthy pool", |s| s["state"] == "healthy");
    let g = frontend::pool::group_of(&format!("sip:user0001@{DOMAIN}"), 3);
    let mut before = Vec::new();
    for i in 1..=30 {
        let user = format!("user{i:04}");
        if frontend::pool::group_of(&format!("sip:{user}@{DOMAIN}"), 3) != g {
            continue;
        }
        let mut ua = Ua::udp(pool.sip("fe1"), &user, "pw", DOMAIN);
        assert_eq!(ua.register(600).status, 200);
        before.push((user, ua.contact()));
    }
    pool.signal("fe2", nix::sys::signal::Signal::SIGKILL);
    pool.signal("fe3", nix::sys::signal::Signal::SIGKILL);
    let st = pool.wait_status("fe1", "the pool down", |s| s["state"] == "down");
    assert_eq!(st["servers_up"], 1, "{st}");
    // `pool start` says what is missing for every group to have a majority.
    let out = pool.cli("fe1", &["pool", "start", "pool1", "--wait", "1"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 of 3 servers are up") && text.contains("Start 1 more: fe2"),
        "{text}"
    );

    // Without the flag: what it would do, and nothing changes.
    let group = g.to_string();
    let out = pool.cli("fe1", &["pool", "reset-group", "pool1", &group]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        text.contains("would reset the group to fe1") && text.contains("nothing changed"),
        "{text}"
    );
    assert_eq!(pool.status("fe1")["state"], "down");

    let out = pool.cli(
        "fe1",
        &[
            "pool",
            "reset-group",
            "pool1",
            &group,
            "--accept-data-loss",
            "--json",
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["done"], true, "{report}");
    assert_eq!(report["chosen"], "fe1", "{report}");
    assert_eq!(
        report["missing"],
        serde_json::json!(["fe2", "fe3"]),
        "{report}"
    );
    assert!(
        report["next"]
            .as_str()
            .unwrap()
            .contains("store add-replica"),
        "{report}"
    );
    let st = pool.wait_status("fe1", "the reset group serving", |s| {
        s["groups"][g as usize]["serving"] == true
    });
    assert_eq!(
        st["state"], "partial-outage",
        "the other groups still have no majority: {st}"
    );
    // The status names the users the outage affects: those of the other groups.
    let affected = &st["affected_users"];
    let expected = (1..=30)
        .filter(|i| frontend::pool::group_of(&format!("sip:user{i:04}@{DOMAIN}"), 3) != g)
        .count();
    assert_eq!(affected["count"], expected, "{st}");
    assert!(
        affected["first"]
            .as_array()
            .unwrap()
            .iter()
            .all(|u| frontend::pool::group_of(u.as_str().unwrap(), 3) != g),
        "{affected}"
    );
    // What was acknowledged before is there, unless the report says it was lost.
    if report["loss"]["lost_transactions"] == 0 {
        for (user, contact) in &before {
            let bound = pool.contacts("fe1", user);
            assert!(
                bound
                    .iter()
                    .any(|c| c.split(';').next() == contact.split(';').next()),
                "{user} lost its registration: {bound:?}"
            );
        }
    }
    let mut ua = Ua::udp(pool.sip("fe1"), &before[0].0, "pw", DOMAIN);
    assert_eq!(ua.register(600).status, 200, "the group takes writes again");

    // fe2 comes back: the other groups have their majority again, and the reset group's
    // primary takes fe2's replica back by itself, reseeded from fe1.
    pool.restart("fe2");
    let st = pool.wait_status("fe1", "every group serving with fe2", |s| {
        all_serving(s)
            && s["groups"][g as usize]["replicas"]
                .as_array()
                .is_some_and(|r| {
                    r.iter()
                        .any(|r| r["server"] == "fe2" && r["synchronized"] == true)
                })
    });
    assert_eq!(st["state"], "degraded", "fe3 is still down: {st}");
    let out = pool.cli("fe1", &["pool", "start", "pool1", "--wait", "30"]);
    assert!(out.status.success(), "{out:?}");
    for (user, _) in &before {
        assert!(!pool.contacts("fe2", user).is_empty(), "{user} through fe2");
    }
}

/// Waits until the load has done `more` requests since now (it goes on after a failure),
/// then stops it: its requests, and how many were acknowledged.
fn go_on_then_stop(load: PoolLoad, more: usize, after: &str) -> (Vec<testkit::pool::Op>, usize) {
    let before = load.done();
    assert!(
        load.wait_for(before + more, Duration::from_secs(60)),
        "the load did not go on after {after}"
    );
    let ops = load.stop();
    let acked = ops.iter().filter(|o| o.status == 200).count();
    (ops, acked)
}

/// A pool lab of `servers` servers (its store on a back-end server) whose pool section has
/// `line` added, e.g. `replace_after_s = 2`.
fn pool_with(name: &str, servers: usize, groups: u32, line: &str, users: usize) -> PoolLab {
    let topology = testkit::pool::pool_topology(servers, groups, StoreOn::Backend).replace(
        &format!("routing_groups = {groups}\n"),
        &format!("routing_groups = {groups}\n{line}\n"),
    );
    assert!(topology.contains(line), "{topology}");
    PoolLab::start_topology(EXE.as_ref(), TMP, name, &topology, users)
}

/// The servers holding each group's replicas, as the pool status from `via` reports them.
fn replicas_of(st: &serde_json::Value) -> Vec<std::collections::BTreeSet<String>> {
    st["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            g["replicas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["server"].as_str().unwrap().to_string())
                .collect()
        })
        .collect()
}

/// Every group serves with three healthy, synchronized replicas, none on `gone`.
fn fully_replicated_without(st: &serde_json::Value, gone: &[&str]) -> bool {
    all_serving(st)
        && st["groups"].as_array().unwrap().iter().all(|g| {
            let r = g["replicas"].as_array().unwrap();
            r.len() == 3
                && r.iter().all(|r| {
                    r["healthy"] == true
                        && r["synchronized"] == true
                        && !gone.contains(&r["server"].as_str().unwrap_or(""))
                })
        })
}

/// Each group's servers in the placement of a pool of `names` with no server left out.
fn first_placement(names: &[&str], groups: u32) -> Vec<std::collections::BTreeSet<String>> {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    frontend::pool::placement(&names, groups, &std::collections::BTreeSet::new())
        .into_iter()
        .map(|p| p.replicas.into_iter().collect())
        .collect()
}

/// A 4-server pool loses fe4 for good (`kill -9`): past `replace_after_s`, each of its groups
/// gets a third replica on another server, seeded by snapshot, so a second `kill -9` (fe3)
/// stops no group — any two of the pool's servers can fail one after the other. Nothing
/// acknowledged is lost. When both come back, every group returns to its first placement
/// and the stand-in replicas are closed and their data removed.
#[test]
fn a_lost_server_is_replaced_so_a_second_loss_stops_no_group() {
    const USERS: usize = 2000;
    const GROUPS: u32 = 8;
    let pool = pool_with("pool_replace", 4, GROUPS, "replace_after_s = 2", USERS);
    pool.wait_status("fe1", "a healthy pool", |s| s["state"] == "healthy");
    let names = ["fe1", "fe2", "fe3", "fe4"];
    let first = first_placement(&names, GROUPS);
    let load = PoolLoad::start(names.map(|s| pool.sip(s)).to_vec(), 4, USERS);
    assert!(
        load.wait_for(200, Duration::from_secs(60)),
        "the load did not start"
    );
    let killed_at = Instant::now();
    pool.signal("fe4", nix::sys::signal::Signal::SIGKILL);
    let st = pool.wait_status("fe1", "every group on 3 servers without fe4", |s| {
        fully_replicated_without(s, &["fe4"])
    });
    let replaced = killed_at.elapsed();
    assert_eq!(st["state"], "degraded", "fe4 is still down: {st}");
    let fe4 = &st["servers"].as_array().unwrap()[3];
    assert!(
        fe4["server"] == "fe4" && fe4["lost"] == true && fe4["replicas"] == 0,
        "fe4 is reported lost, holding nothing: {fe4}"
    );
    let before = load.done();
    assert!(
        load.wait_for(before + 200, Duration::from_secs(60)),
        "the load did not go on after the re-placement"
    );
    let second_at = Instant::now();
    pool.signal("fe3", nix::sys::signal::Signal::SIGKILL);
    pool.wait_status(
        "fe1",
        "every group serving without fe3 and fe4",
        all_serving,
    );
    let recovered = second_at.elapsed();
    let (ops, acked) = go_on_then_stop(load, 200, "the second kill");
    eprintln!(
        "re-placement: fe4 killed, every group on 3 servers again after {replaced:?}; fe3 \
         killed, every group serving after {recovered:?}; {acked} acknowledged of {} requests",
        ops.len()
    );
    let lost = lost(&pool, "fe1", &ops);
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:?}");
    // Both come back: the groups return to their first placement, and the stand-ins go.
    pool.restart("fe3");
    pool.restart("fe4");
    let st = pool.wait_status("fe1", "every group back on its first placement", |s| {
        s["state"] == "healthy" && replicas_of(s) == first
    });
    for (g, servers) in first.iter().enumerate() {
        for name in names {
            let dir = pool
                .lab
                .data
                .join(name)
                .join("pools/pool1")
                .join(format!("rg{g}"));
            wait_until(
                &format!("{} only where group {g} is placed", dir.display()),
                || dir.exists() == servers.contains(name),
            );
        }
    }
    assert!(fully_replicated_without(&st, &[]), "{st}");
}

/// A server added to the pool's topology (fe4) is started, then the three others are
/// restarted one by one with the new topology under load: while the servers run different
/// lists, nothing moves; once all run the new one, the groups move to the 4-server placement
/// (fe4 taking its share, seeded by snapshot), no group is started twice, and nothing
/// acknowledged is lost.
#[test]
fn a_server_added_to_the_topology_takes_its_share() {
    const USERS: usize = 2000;
    const GROUPS: u32 = 8;
    let pool = PoolLab::start_with(
        EXE.as_ref(),
        TMP,
        "pool_add",
        3,
        GROUPS,
        USERS,
        StoreOn::Backend,
    );
    pool.wait_status("fe1", "a healthy pool", |s| s["state"] == "healthy");
    let old = ["fe1", "fe2", "fe3"];
    let load = PoolLoad::start(old.map(|s| pool.sip(s)).to_vec(), 3, USERS);
    assert!(
        load.wait_for(200, Duration::from_secs(60)),
        "the load did not start"
    );
    // The new topology: fe4 declared and listed in the pool.
    let text = std::fs::read_to_string(&pool.topology).unwrap();
    let sip = testkit::free_port("127.0.0.1");
    let admin4: std::net::SocketAddr = format!("127.0.0.1:{}", testkit::free_port("127.0.0.1"))
        .parse()
        .unwrap();
    let fe4 = format!(
        "[[server]]\nname = \"fe4\"\nsite = \"dc1\"\nsip_udp = \"127.0.0.1:{sip}\"\nsip_tcp = \"127.0.0.1:{sip}\"\nrpc = \"127.0.0.1:{}\"\nadmin = \"{admin4}\"\n",
        testkit::free_port("127.0.0.1"),
    );
    let listed = "servers = [\"fe1\", \"fe2\", \"fe3\"]";
    assert!(text.contains(listed) && text.contains("[[pool]]"), "{text}");
    let changed = text
        .replace(listed, "servers = [\"fe1\", \"fe2\", \"fe3\", \"fe4\"]")
        .replacen("[[pool]]", &format!("{fe4}[[pool]]"), 1);
    std::fs::write(&pool.topology, &changed).unwrap();
    pool.restart("fe4");
    // fe4 runs the new list, the others the old one: no group moves.
    let status4 = || {
        testkit::admin_call(
            &admin4,
            Some(&pool.token),
            "GET",
            "/api/v1/pools/pool1/status",
            None,
        )
    };
    wait_until("fe4 seeing every group serving", || {
        let (code, st) = status4();
        code == 200 && all_serving(&st)
    });
    // A few rounds of fe4's re-placement (every 500 ms) go by: nothing may move.
    let seen = Instant::now();
    while seen.elapsed() < Duration::from_secs(2) {
        let (_, st) = status4();
        assert!(
            replicas_of(&st).iter().all(|r| !r.contains("fe4")),
            "a group moved before every server ran the new topology: {st}"
        );
    }
    for name in old {
        pool.signal(name, nix::sys::signal::Signal::SIGTERM);
        pool.wait_exit(name);
        pool.restart(name);
        pool.wait_status(
            name,
            &format!("every group serving after {name}'s restart"),
            all_serving,
        );
    }
    let names = ["fe1", "fe2", "fe3", "fe4"];
    let want = first_placement(&names, GROUPS);
    let st = pool.wait_status("fe1", "every group on the 4-server placement", |s| {
        s["state"] == "healthy" && replicas_of(s) == want
    });
    let (ops, acked) = go_on_then_stop(load, 200, "the topology change");
    eprintln!(
        "topology change: {acked} acknowledged of {} requests; {st}",
        ops.len()
    );
    let lost = lost(&pool, "fe1", &ops);
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:?}");
}

/// A 5-server pool with `group_replicas = 5`: `kill -9` of two servers at the same moment,
/// under load, stops no group for longer than an election, and loses nothing acknowledged.
#[test]
fn five_replicas_survive_two_servers_killed_at_once() {
    const USERS: usize = 2000;
    const GROUPS: u32 = 5;
    let pool = pool_with("pool_five", 5, GROUPS, "group_replicas = 5", USERS);
    let st = pool.wait_status("fe1", "a healthy pool", |s| s["state"] == "healthy");
    for g in st["groups"].as_array().unwrap() {
        assert_eq!(g["replicas"].as_array().unwrap().len(), 5, "{g}");
    }
    let names = ["fe1", "fe2", "fe3", "fe4", "fe5"];
    let load = PoolLoad::start(names.map(|s| pool.sip(s)).to_vec(), 5, USERS);
    assert!(
        load.wait_for(200, Duration::from_secs(60)),
        "the load did not start"
    );
    let killed_at = Instant::now();
    pool.signal("fe4", nix::sys::signal::Signal::SIGKILL);
    pool.signal("fe5", nix::sys::signal::Signal::SIGKILL);
    pool.wait_status(
        "fe1",
        "every group serving without fe4 and fe5",
        all_serving,
    );
    let recovered = killed_at.elapsed();
    let (ops, acked) = go_on_then_stop(load, 300, "the kills");
    eprintln!(
        "two of five killed at once: every group serving after {recovered:?}; {acked} \
         acknowledged of {} requests",
        ops.len()
    );
    let lost = lost(&pool, "fe1", &ops);
    assert!(lost.is_empty(), "acknowledged changes lost: {lost:?}");
}
