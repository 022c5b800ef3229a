//! Fencing on a failover cluster's shared storage: two owners open the same database file;
//! once the newer one took the fence, the older one's writes fail and change nothing.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use store::machine::users;
use store::{Command, LocalStore, Options, StoreError, User};

fn user(i: u32) -> Command {
    Command::AddUser {
        user: User {
            aor: format!("sip:u{i}@example.com"),
            username: format!("u{i}"),
            realm: "example.com".into(),
            ha1_md5: "m".into(),
            ha1_sha256: "s".into(),
            created_ms: 0,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_owner_cannot_write_once_a_newer_one_took_the_fence() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("shared").join("store.sqlite");
    let (old, previous) = LocalStore::open_fenced(&db, Options::default(), 1, "n1").unwrap();
    assert_eq!(previous, (0, None));
    old.apply(user(1)).await.unwrap();

    let (new, previous) = LocalStore::open_fenced(&db, Options::default(), 2, "n2").unwrap();
    assert_eq!(previous, (1, Some("n1".to_string())));

    // The old owner wakes up: its write is refused, and nothing of it is stored.
    match old.apply(user(2)).await {
        Err(StoreError::Fenced { token, current }) => assert_eq!((token, current), (1, 2)),
        other => panic!("the old owner wrote: {other:?}"),
    }
    new.apply(user(3)).await.unwrap();
    let aors: Vec<String> = new
        .read(|c| users(c, 0))
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.aor)
        .collect();
    assert_eq!(aors, vec!["sip:u1@example.com", "sip:u3@example.com"]);

    // Nor can an owner of an older token take the storage back.
    match LocalStore::open_fenced(&db, Options::default(), 1, "n1") {
        Err(StoreError::Fenced { token, current }) => assert_eq!((token, current), (1, 2)),
        Ok(_) => panic!("an older token took the storage back"),
        Err(e) => panic!("unexpected error: {e}"),
    }
}
