//! The store's behaviour through its public handle: registrar rules, publications,
//! subscriptions and their NOTIFYs, expiry, isolation of refused commands, and durability
//! across a reopen.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use store::*;

const ALICE: &str = "sip:alice@example.com";
const BOB: &str = "sip:bob@example.com";

fn user(aor: &str) -> Command {
    let name = aor
        .trim_start_matches("sip:")
        .split('@')
        .next()
        .unwrap_or("")
        .to_string();
    Command::AddUser {
        user: User {
            aor: aor.into(),
            username: name,
            realm: "example.com".into(),
            ha1_md5: "m".into(),
            ha1_sha256: "s".into(),
            created_ms: 1,
        },
    }
}

fn route() -> Route {
    Route {
        transport: "udp".into(),
        source: "127.0.0.1:5000".into(),
        flow: String::new(),
    }
}

fn register(aor: &str, call_id: &str, cseq: u32, contacts: &[(&str, u32)], now_ms: u64) -> Command {
    Command::Register(Register {
        aor: aor.into(),
        call_id: call_id.into(),
        cseq,
        update: RegisterUpdate::Contacts(
            contacts
                .iter()
                .map(|(c, e)| ContactUpdate {
                    contact: (*c).into(),
                    params: String::new(),
                    expires_s: *e,
                })
                .collect(),
        ),
        route: route(),
        user_agent: "test".into(),
        max_contacts: 3,
        now_ms,
    })
}

async fn open(dir: &tempfile::TempDir) -> Store {
    Store::open_local(&dir.path().join("store.sqlite"), Options::default()).expect("open")
}

async fn with_users(dir: &tempfile::TempDir) -> Store {
    let s = open(dir).await;
    s.apply(user(ALICE)).await.expect("alice");
    s.apply(user(BOB)).await.expect("bob");
    s
}

fn bindings_of(applied: &Applied) -> Vec<String> {
    match &applied.outcome {
        Outcome::Bindings(b) => b.iter().map(|b| b.contact.clone()).collect(),
        other => panic!("not bindings: {other:?}"),
    }
}

#[tokio::test]
async fn adding_a_user_twice_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    assert!(matches!(
        s.apply(user(ALICE)).await,
        Err(StoreError::Exists(_))
    ));
    assert_eq!(s.users(0).await.expect("users").len(), 2);
}

#[tokio::test]
async fn register_adds_refreshes_and_removes_contacts() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    let a = s
        .apply(register(
            ALICE,
            "c1",
            1,
            &[("sip:a@1.1.1.1", 60), ("sip:a@2.2.2.2", 60)],
            1_000,
        ))
        .await
        .expect("reg");
    assert_eq!(bindings_of(&a), vec!["sip:a@1.1.1.1", "sip:a@2.2.2.2"]);
    let a = s
        .apply(register(ALICE, "c1", 2, &[("sip:a@1.1.1.1", 0)], 2_000))
        .await
        .expect("unreg one");
    assert_eq!(bindings_of(&a), vec!["sip:a@2.2.2.2"]);
    let remove_all = Command::Register(Register {
        aor: ALICE.into(),
        call_id: "c9".into(),
        cseq: 1,
        update: RegisterUpdate::RemoveAll,
        route: route(),
        user_agent: String::new(),
        max_contacts: 3,
        now_ms: 3_000,
    });
    assert!(bindings_of(&s.apply(remove_all).await.expect("star")).is_empty());
}

#[tokio::test]
async fn out_of_order_cseq_is_refused_and_the_binding_is_unchanged() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    s.apply(register(ALICE, "c1", 5, &[("sip:a@1.1.1.1", 60)], 1_000))
        .await
        .expect("reg");
    let err = s
        .apply(register(ALICE, "c1", 5, &[("sip:a@1.1.1.1", 0)], 2_000))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::OutOfOrder {
                cseq: 5,
                have: 5,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(s.bindings(ALICE, 2_000).await.expect("b").len(), 1);
    // Another Call-ID may replace it regardless of CSeq (RFC 3261 §10.3 step 7).
    s.apply(register(ALICE, "c2", 1, &[("sip:a@1.1.1.1", 0)], 3_000))
        .await
        .expect("other call-id");
    assert!(s.bindings(ALICE, 3_000).await.expect("b").is_empty());
}

#[tokio::test]
async fn too_many_contacts_fails_the_whole_request() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    let four = [
        ("sip:a@1", 60),
        ("sip:a@2", 60),
        ("sip:a@3", 60),
        ("sip:a@4", 60),
    ];
    assert!(matches!(
        s.apply(register(ALICE, "c", 1, &four, 0)).await,
        Err(StoreError::TooManyContacts { count: 4, .. })
    ));
    assert!(
        s.bindings(ALICE, 0).await.expect("b").is_empty(),
        "nothing of the refused request applied"
    );
}

#[tokio::test]
async fn unknown_user_cannot_register() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    let err = s
        .apply(register(
            "sip:eve@example.com",
            "c",
            1,
            &[("sip:e@1", 60)],
            0,
        ))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::NotFound(_)));
}

fn subscribe_new(
    watcher: &str,
    presentity: &str,
    call_id: &str,
    expires_s: u32,
    now_ms: u64,
) -> Command {
    Command::Subscribe(Subscribe::New {
        subscription: Box::new(Subscription {
            id: 0,
            presentity: presentity.into(),
            presentity_uri: presentity.into(),
            watcher: watcher.into(),
            watcher_uri: watcher.into(),
            call_id: call_id.into(),
            watcher_tag: "wt".into(),
            local_tag: "lt".into(),
            contact: "sip:w@127.0.0.1:5000".into(),
            route: route(),
            expires_ms: 0,
            notify_cseq: 0,
        }),
        expires_s,
        now_ms,
    })
}

fn publish_create(aor: &str, etag: &str, body: &str, expires_s: u32, now_ms: u64) -> Command {
    Command::Publish(Publish::Create {
        aor: aor.into(),
        etag: etag.into(),
        body: body.as_bytes().to_vec(),
        content_type: "application/pidf+xml".into(),
        expires_s,
        now_ms,
    })
}

#[tokio::test]
async fn a_publication_notifies_every_watcher_with_increasing_cseq() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    let sub = s
        .apply(subscribe_new(ALICE, BOB, "s1", 600, 1_000))
        .await
        .expect("sub");
    assert_eq!(sub.notify.len(), 1, "initial NOTIFY");
    assert_eq!(sub.notify[0].subscription.notify_cseq, 1);
    assert_eq!(sub.notify[0].presence.registered_contacts, 0);

    let p = s
        .apply(publish_create(BOB, "e1", "<open/>", 60, 2_000))
        .await
        .expect("pub");
    assert_eq!(
        p.outcome,
        Outcome::Published {
            etag: Some("e1".into())
        }
    );
    assert_eq!(p.notify.len(), 1);
    assert_eq!(p.notify[0].subscription.notify_cseq, 2);
    assert_eq!(p.notify[0].presence.publications[0].body, b"<open/>");

    // A refresh changes nothing a watcher sees: no NOTIFY.
    let r = s
        .apply(Command::Publish(Publish::Refresh {
            aor: BOB.into(),
            etag: "e1".into(),
            new_etag: "e2".into(),
            expires_s: 60,
            now_ms: 3_000,
        }))
        .await
        .expect("refresh");
    assert!(r.notify.is_empty());
    // The old entity-tag is gone.
    let stale = Command::Publish(Publish::Remove {
        aor: BOB.into(),
        etag: "e1".into(),
        now_ms: 4_000,
    });
    assert!(matches!(
        s.apply(stale).await,
        Err(StoreError::UnknownEtag(_))
    ));
    let rm = s
        .apply(Command::Publish(Publish::Remove {
            aor: BOB.into(),
            etag: "e2".into(),
            now_ms: 4_000,
        }))
        .await
        .expect("rm");
    assert_eq!(rm.notify[0].subscription.notify_cseq, 3);
    assert!(rm.notify[0].presence.publications.is_empty());
}

#[tokio::test]
async fn someone_elses_etag_is_unknown() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    s.apply(publish_create(BOB, "e1", "x", 60, 0))
        .await
        .expect("pub");
    let steal = Command::Publish(Publish::Remove {
        aor: ALICE.into(),
        etag: "e1".into(),
        now_ms: 1,
    });
    assert!(matches!(
        s.apply(steal).await,
        Err(StoreError::UnknownEtag(_))
    ));
}

#[tokio::test]
async fn expiry_terminates_subscriptions_and_notifies_presence_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    s.apply(subscribe_new(ALICE, BOB, "s1", 100, 0))
        .await
        .expect("sub");
    s.apply(register(BOB, "r", 1, &[("sip:b@1", 10)], 0))
        .await
        .expect("reg");
    assert_eq!(s.next_expiry().await.expect("next"), Some(10_000));
    // Bob's binding runs out at 10 s: Alice is told Bob is no longer registered.
    let e = s
        .apply(Command::Expire { now_ms: 15_000 })
        .await
        .expect("expire");
    assert_eq!(e.notify.len(), 1);
    assert_eq!(e.notify[0].presence.registered_contacts, 0);
    assert!(matches!(
        e.notify[0].state,
        SubscriptionState::Active { expires_s: 85 }
    ));
    // The subscription itself runs out at 100 s.
    let e = s
        .apply(Command::Expire { now_ms: 100_000 })
        .await
        .expect("expire");
    assert_eq!(e.notify.len(), 1);
    assert_eq!(
        e.notify[0].state,
        SubscriptionState::Terminated {
            reason: "timeout".into()
        }
    );
    assert_eq!(s.next_expiry().await.expect("next"), None);
}

#[tokio::test]
async fn refresh_and_unsubscribe_in_dialog() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    s.apply(subscribe_new(ALICE, BOB, "s1", 100, 0))
        .await
        .expect("sub");
    let refresh = |expires_s, now_ms| {
        Command::Subscribe(Subscribe::Refresh {
            call_id: "s1".into(),
            watcher_tag: "wt".into(),
            local_tag: "lt".into(),
            contact: None,
            route: route(),
            expires_s,
            now_ms,
        })
    };
    let r = s.apply(refresh(300, 50_000)).await.expect("refresh");
    assert_eq!(r.notify[0].subscription.notify_cseq, 2);
    assert_eq!(r.notify[0].subscription.expires_ms, 350_000);
    let end = s.apply(refresh(0, 60_000)).await.expect("unsubscribe");
    assert!(matches!(
        end.notify[0].state,
        SubscriptionState::Terminated { .. }
    ));
    assert!(
        matches!(
            s.apply(refresh(300, 70_000)).await,
            Err(StoreError::NotFound(_))
        ),
        "dialog is gone: 481"
    );
}

#[tokio::test]
async fn refused_commands_in_a_batch_do_not_disturb_the_others() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    // Many concurrent commands land in the same group commits; half are refused.
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let s = s.clone();
        tasks.push(tokio::spawn(async move {
            let cmd = if i % 2 == 0 {
                user(&format!("sip:u{i}@example.com"))
            } else {
                user(ALICE)
            };
            s.apply(cmd).await.is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.expect("join") {
            ok += 1;
        }
    }
    assert_eq!(ok, 100);
    assert_eq!(s.users(0).await.expect("users").len(), 102);
    let (commits, applied, refused, failed) = s.counters();
    assert!(
        commits < applied,
        "batched: {commits} commits for {applied} commands"
    );
    assert_eq!((refused, failed), (100, 0));
}

#[tokio::test]
async fn acknowledged_writes_survive_a_reopen() {
    let dir = tempfile::tempdir().expect("tmp");
    {
        let s = with_users(&dir).await;
        s.apply(register(ALICE, "c1", 1, &[("sip:a@1", 3600)], 1_000))
            .await
            .expect("reg");
    }
    let s = open(&dir).await;
    let b = s.bindings(ALICE, 2_000).await.expect("bindings");
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].cseq, 1);
}

/// A user read once is served from memory, and a password change or removal through the
/// store is seen by the very next read.
#[tokio::test]
async fn user_reads_see_changes_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let s = with_users(&dir).await;
    assert_eq!(
        s.user(ALICE).await.expect("read").expect("alice").ha1_md5,
        "m"
    );
    s.apply(Command::SetPassword {
        aor: ALICE.into(),
        ha1_md5: "m2".into(),
        ha1_sha256: "s2".into(),
    })
    .await
    .expect("set password");
    assert_eq!(
        s.user(ALICE).await.expect("read").expect("alice").ha1_md5,
        "m2"
    );
    s.apply(Command::RemoveUser {
        aor: ALICE.into(),
        now_ms: 1,
    })
    .await
    .expect("remove");
    assert_eq!(s.user(ALICE).await.expect("read"), None);
}
