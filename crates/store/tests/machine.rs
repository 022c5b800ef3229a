//! The state machine on its own: exactly-once application of retried requests, and the
//! failover history.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use rusqlite::Connection;
use store::machine::{apply_batch, init_schema, query};
use store::*;

fn db() -> Connection {
    let c = Connection::open_in_memory().unwrap();
    init_schema(&c).unwrap();
    c
}

fn add(aor: &str) -> Command {
    Command::AddUser {
        user: User {
            aor: aor.into(),
            username: "u".into(),
            realm: "example.com".into(),
            ha1_md5: "m".into(),
            ha1_sha256: "s".into(),
            created_ms: 0,
        },
    }
}

/// A request retried after a failover (same id) gets the first outcome and is not applied
/// again; another request with the same command is applied (and refused) on its own.
#[test]
fn a_retried_request_is_applied_once() {
    let c = db();
    let first = Envelope {
        request: Some(7),
        cmd: add("sip:a@example.com"),
    };
    let r = apply_batch(&c, [&first].into_iter()).unwrap();
    assert!(r[0].is_ok());
    let r = apply_batch(&c, [&first].into_iter()).unwrap();
    assert!(
        r[0].is_ok(),
        "the retry gets the first outcome, not 'already exists': {r:?}"
    );
    let other = Envelope {
        request: Some(8),
        cmd: add("sip:a@example.com"),
    };
    let r = apply_batch(&c, [&other].into_iter()).unwrap();
    assert!(matches!(r[0], Err(StoreError::Exists(_))));
    match query(&c, &Query::Users { now_ms: 0 }).unwrap() {
        QueryResult::Users(u) => assert_eq!(u.len(), 1),
        other => panic!("{other:?}"),
    }
}

/// A result remembered by an earlier version (as JSON) still answers a retry after an upgrade.
#[test]
fn a_result_remembered_as_json_still_answers_a_retry() {
    let c = db();
    let earlier: Result<Applied, StoreError> = Err(StoreError::Exists("sip:b@example.com".into()));
    c.execute(
        "INSERT INTO requests (id, result) VALUES (?1, ?2)",
        rusqlite::params![
            9u128.to_be_bytes().to_vec(),
            serde_json::to_vec(&earlier).unwrap()
        ],
    )
    .unwrap();
    let retry = Envelope {
        request: Some(9),
        cmd: add("sip:b@example.com"),
    };
    let r = apply_batch(&c, [&retry].into_iter()).unwrap();
    assert!(
        matches!(&r[0], Err(StoreError::Exists(a)) if a == "sip:b@example.com"),
        "the retry gets the remembered refusal and is not applied: {r:?}"
    );
    match query(&c, &Query::Users { now_ms: 0 }).unwrap() {
        QueryResult::Users(u) => assert!(u.is_empty(), "{u:?}"),
        other => panic!("{other:?}"),
    }
}

/// A failover is recorded, then completed with its first write; RTO comes from the record.
#[test]
fn failovers_are_recorded_with_rpo_and_rto() {
    let c = db();
    let ev = FailoverEvent {
        id: 0,
        kind: FailoverKind::Automatic,
        from_server: Some("fe-a1".into()),
        to_server: "fe-a2".into(),
        term: 3,
        detected_ms: 1_000,
        decided_ms: 1_400,
        first_write_ms: 0,
        last_acked_before: 41,
        last_acked_after: 41,
        lost_transactions: 0,
        lost_detail: String::new(),
        reason: "primary unreachable".into(),
    };
    let r = apply_batch(
        &c,
        [&Envelope {
            request: None,
            cmd: Command::RecordFailover(ev),
        }]
        .into_iter(),
    )
    .unwrap();
    let Ok(Applied {
        outcome: Outcome::Recorded(id),
        ..
    }) = &r[0]
    else {
        panic!("{r:?}")
    };
    let serving = Envelope {
        request: None,
        cmd: Command::FailoverServing {
            id: *id,
            first_write_ms: 1_650,
        },
    };
    assert!(apply_batch(&c, [&serving].into_iter()).unwrap()[0].is_ok());
    assert!(
        apply_batch(&c, [&serving].into_iter()).unwrap()[0].is_err(),
        "completed only once"
    );
    let QueryResult::Failovers(list) = query(&c, &Query::Failovers { limit: 10 }).unwrap() else {
        panic!()
    };
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].rto_ms(), Some(650));
    assert_eq!(list[0].to_server, "fe-a2");
}

/// A database written by schema version 1 opens and gains the new tables.
#[test]
fn version_1_databases_are_upgraded() {
    let c = Connection::open_in_memory().unwrap();
    c.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         INSERT INTO meta VALUES ('schema_version', 1);",
    )
    .unwrap();
    init_schema(&c).unwrap();
    let v: i64 = c
        .query_row(
            "SELECT value FROM meta WHERE key = 'schema_version'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(v, machine::SCHEMA_VERSION);
    assert!(
        matches!(query(&c, &Query::Failovers { limit: 1 }).unwrap(), QueryResult::Failovers(l) if l.is_empty())
    );
}

fn env(cmd: Command) -> Envelope {
    Envelope { request: None, cmd }
}

/// A store whose writes were closed (a log-shipping failover took it over) refuses every
/// data change, in the same batch as the closing command too, while the transaction log and
/// the history go on; the refusal says why; and only a local reopening (a copy that becomes
/// a store of its own) lifts it.
#[test]
fn closed_writes_refuse_data_changes_but_not_backups() {
    let c = db();
    let close = env(Command::CloseWrites {
        reason: "failed over to store-dr".into(),
    });
    let (before, after) = (env(add("sip:a@example.com")), env(add("sip:b@example.com")));
    let r = apply_batch(&c, [&before, &close, &after].into_iter()).unwrap();
    assert!(r[0].is_ok() && r[1].is_ok(), "{r:?}");
    assert_eq!(
        r[2],
        Err(StoreError::WritesClosed("failed over to store-dr".into()))
    );
    let r = apply_batch(
        &c,
        [
            &env(Command::SetTransactionLog { on: true }),
            &env(Command::TruncateTransactionLog { upto: 3 }),
            &env(Command::Expire { now_ms: 1 }),
        ]
        .into_iter(),
    )
    .unwrap();
    assert!(r[0].is_ok() && r[1].is_ok(), "{r:?}");
    assert!(matches!(r[2], Err(StoreError::WritesClosed(_))), "{r:?}");
    // Every command counts in the LSN, refused ones included.
    assert_eq!(machine::lsn(&c).unwrap(), 6);
    assert_eq!(
        machine::writes_closed(&c).unwrap().as_deref(),
        Some("failed over to store-dr")
    );
    assert!(machine::reopen_writes(&c).unwrap());
    let r = apply_batch(&c, [&after].into_iter()).unwrap();
    assert!(r[0].is_ok(), "{r:?}");
    match query(&c, &Query::Users { now_ms: 0 }).unwrap() {
        QueryResult::Users(u) => assert_eq!(u.len(), 2),
        other => panic!("{other:?}"),
    }
}
