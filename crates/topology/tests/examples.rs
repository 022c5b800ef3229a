//! The shipped examples are valid, and the model derived from them is what a reader expects.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::path::Path;

use topology::{
    Commit, FailoverMode, PoolKind, ReplicaRole, Role, Safety, SecondaryMode, StoreMode, Topology,
};

fn example(name: &str) -> Topology {
    let path = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples")).join(name);
    match topology::load(&path) {
        Ok(t) => t,
        Err(e) => panic!("{name} should be valid:\n{e}"),
    }
}

#[test]
fn standard_example_is_valid() {
    let t = example("standard.toml");
    assert_eq!(t.name, "standard");
    assert_eq!(t.sip_domain, "example.com");
    let fe1 = t.server("fe1").expect("fe1");
    assert_eq!(fe1.sip_udp, Some("127.0.0.11:5060".parse().expect("addr")));
    assert_eq!(fe1.sip_tcp, fe1.sip_udp);
    assert_eq!(fe1.admin, "127.0.0.11:8080".parse().expect("addr"));
    assert_eq!(t.roles_of("fe1"), vec![Role::Frontend, Role::Store]);
    let pool = t.frontend_pool_of("fe1").expect("pool");
    assert_eq!(
        (pool.name.as_str(), pool.routing_groups, pool.store.as_str()),
        ("pool1", 1, "store1")
    );
    assert_eq!(pool.sites, vec!["dc1"]);
    let stores = t.stores_on("fe1");
    assert_eq!(stores.len(), 1);
    assert_eq!(stores[0].0.mode, StoreMode::Standalone);
    assert_eq!(stores[0].1.role, ReplicaRole::Primary);
    assert!(t.pairs.is_empty() && t.log_shipping.is_empty());
}

#[test]
fn standard_example_tables() {
    let tables = example("standard.toml").tables();
    let titles: Vec<&str> = tables.iter().map(|t| t.title.as_str()).collect();
    assert_eq!(
        titles,
        [
            "Sites",
            "Servers",
            "Pools",
            "Stores",
            "Pairs",
            "Log shipping"
        ]
    );
    for table in &tables {
        for row in &table.rows {
            assert_eq!(row.len(), table.header.len(), "{}", table.title);
        }
    }
    assert_eq!(tables[0].rows, vec![vec!["dc1", "Main data center"]]);
    assert_eq!(
        tables[1].rows,
        vec![vec![
            "fe1",
            "dc1",
            "frontend, store",
            "127.0.0.11:5060",
            "127.0.0.11:5060",
            "127.0.0.11:7000",
            "127.0.0.11:8080"
        ]]
    );
    assert_eq!(
        tables[2].rows,
        vec![vec!["pool1", "frontend", "dc1", "fe1", "store1", "1"]]
    );
    assert_eq!(
        tables[3].rows,
        vec![vec![
            "store1",
            "dc1",
            "standalone",
            "-",
            "-",
            "fe1 (primary, sync, manual)"
        ]]
    );
    assert!(tables[4].rows.is_empty());
    assert!(tables[5].rows.is_empty());
}

#[test]
fn enterprise_example_is_valid() {
    let t = example("enterprise.toml");
    assert_eq!(t.sites.len(), 3);
    assert_eq!(t.servers.len(), 10);
    assert_eq!(t.roles_of("witness1"), vec![Role::Witness]);
    assert_eq!(t.roles_of("fe-a1"), vec![Role::Frontend, Role::Store]);
    assert_eq!(t.roles_of("be-a4"), vec![Role::Store]);
    assert_eq!(
        t.roles_of("chat-a1"),
        vec![Role::PersistentChat, Role::Store]
    );
    assert_eq!(
        t.roles_of("chat-b1"),
        vec![Role::PersistentChat, Role::Store]
    );
    assert_eq!(t.roles_of("nobody"), vec![]);
    assert_eq!(
        t.frontend_pool_of("fe-b2").map(|p| p.name.as_str()),
        Some("pool-b")
    );
    assert_eq!(t.frontend_pool_of("chat-a1"), None);

    let chat = t.pool("chat").expect("chat pool");
    assert_eq!(chat.kind, PoolKind::PersistentChat);
    assert_eq!(chat.sites, vec!["dc-a", "dc-b"]);
    assert_eq!(chat.servers, vec!["chat-a1", "chat-b1"]);
    assert_eq!(
        (chat.active.clone(), chat.idle.clone()),
        (vec!["chat-a1".into()], vec!["chat-b1".into()])
    );

    let store_a = t.store("store-a").expect("store-a");
    assert_eq!(
        store_a.listener,
        Some("127.0.0.21:7100".parse().expect("addr"))
    );
    let modes: Vec<_> = store_a
        .replicas
        .iter()
        .map(|r| (r.server.as_str(), r.commit, r.failover, r.readable))
        .collect();
    assert_eq!(
        modes,
        vec![
            ("fe-a1", Commit::Sync, FailoverMode::Automatic, false),
            ("fe-a2", Commit::Sync, FailoverMode::Automatic, false),
            ("fe-a3", Commit::Sync, FailoverMode::Automatic, false),
            ("be-a4", Commit::Async, FailoverMode::Manual, true),
        ]
    );

    let on_be: Vec<_> = t
        .stores_on("be-a4")
        .iter()
        .map(|(s, r)| (s.name.as_str(), r.role))
        .collect();
    assert_eq!(
        on_be,
        vec![
            ("store-a", ReplicaRole::Secondary),
            ("chat-store", ReplicaRole::Mirror)
        ]
    );
    let chat_store = t.store("chat-store").expect("chat-store");
    assert_eq!(chat_store.safety, Safety::HighSafety);
    // High safety with a witness: the mirror fails over automatically.
    assert_eq!(chat_store.replicas[1].failover, FailoverMode::Automatic);

    assert_eq!(t.pairs.len(), 1);
    assert_eq!(
        t.pairs[0].pools,
        ["pool-a".to_string(), "pool-b".to_string()]
    );
    assert!(t.pairs[0].automatic_failover);
    assert_eq!(t.pairs[0].witness.as_deref(), Some("witness1"));

    let chat_dr = t
        .log_shipping
        .iter()
        .find(|l| l.name == "chat-dr")
        .expect("chat-dr");
    assert_eq!(
        (chat_dr.primary.as_str(), chat_dr.secondary.as_str()),
        ("chat-store", "chat-store-dr")
    );
    // Defaults.
    assert_eq!(
        (
            chat_dr.backup_interval_s,
            chat_dr.restore_delay_s,
            chat_dr.backup_alert_s,
            chat_dr.restore_alert_s
        ),
        (60, 0, 3600, 2700)
    );
    assert_eq!(
        (chat_dr.secondary_mode, chat_dr.retention_h),
        (SecondaryMode::Standby, 72)
    );
    assert_eq!(t.pool("pool-b").map(|p| p.routing_groups), Some(16));
}

#[test]
fn enterprise_tables_list_everything() {
    let tables = example("enterprise.toml").tables();
    let counts: Vec<usize> = tables.iter().map(|t| t.rows.len()).collect();
    assert_eq!(counts, [3, 10, 3, 5, 1, 2]);
    let chat = tables[2]
        .rows
        .iter()
        .find(|r| r[0] == "chat")
        .expect("chat row");
    assert_eq!(chat[2], "dc-a, dc-b");
    assert_eq!(chat[3], "active: chat-a1; idle: chat-b1");
    let store_a = tables[3]
        .rows
        .iter()
        .find(|r| r[0] == "store-a")
        .expect("store-a row");
    assert!(
        store_a[5].ends_with("be-a4 (secondary, async, manual, readable)"),
        "{}",
        store_a[5]
    );
    assert_eq!(
        tables[3]
            .rows
            .iter()
            .find(|r| r[0] == "chat-store")
            .map(|r| r[3].as_str()),
        Some("high-safety")
    );
    assert_eq!(tables[4].rows[0], vec!["pool-a, pool-b", "yes", "witness1"]);
}

#[test]
fn load_reports_io_errors_at_line_zero() {
    let err = topology::load(Path::new("/nonexistent/tandem.toml")).expect_err("must fail");
    assert_eq!(err.0.len(), 1);
    assert_eq!((err.0[0].rule, err.0[0].line), ("io", 0));
    assert_eq!(err.0[0].file, "/nonexistent/tandem.toml");
}
