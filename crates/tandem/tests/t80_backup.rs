//! Full backups with real servers: `tandem store backup` onto a share while the store serves
//! (an availability group through its primary, a standalone store through its server),
//! `list-backups`, `verify-backup` (which must catch a damaged file), `restore` into a new
//! database compared with the source, and the log sequence number going on across a failover.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use nix::sys::signal::Signal;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::Duration;
use testkit::replicated::ReplicatedLab;
use testkit::{
    AgReplica, Options, RegisterLoad, Server, admin_call, ag_topology, cluster_topology,
    mirroring_topology, test_dir,
};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");
const SYNC: AgReplica = AgReplica {
    sync: true,
    automatic: true,
    readable: false,
};

/// What a user sees of a store's database: users and bindings, in a stable order.
fn contents(db: &Path) -> (Vec<String>, Vec<(String, String)>) {
    let c = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let users = c
        .prepare("SELECT aor FROM users ORDER BY aor")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<Vec<String>, _>>()
        .unwrap();
    let bindings = c
        .prepare("SELECT aor, contact FROM bindings ORDER BY aor, contact")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<Vec<(String, String)>, _>>()
        .unwrap();
    (users, bindings)
}

fn ok(out: &std::process::Output) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// An availability group under registrations: a backup through `store backup` is taken by the
/// primary; it lists, verifies, and restores into a new file holding exactly what the
/// primary's database held (the load stopped first, so the two can be compared). A flipped
/// byte in the backup fails verification, naming the file, and the restore is refused. After
/// `kill -9` of the primary, the new primary's backup carries on from the first one's LSN.
#[test]
fn backups_of_an_availability_group_verify_restore_and_follow_a_failover() {
    let ag = ReplicatedLab::start(
        EXE.as_ref(),
        TMP,
        "backup_ag",
        ag_topology(&[SYNC, SYNC, SYNC], &Options::default()),
        200,
    );
    ag.wait_primary("a primary", |p| p == "s1");
    let load = RegisterLoad::start(ag.sip, 2, 200, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    let records = load.stop();
    assert!(records.iter().any(|r| r.status == 200));
    let share = ag.dir.join("share");
    let share_s = share.to_str().unwrap();
    let out = ag.cli(&["store", "backup", "store", "--to", share_s, "--json"]);
    let taken: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    let first = taken["full"].clone();
    assert_eq!(first["server"], "s1", "{first}");
    let lsn = first["lsn"].as_u64().unwrap();
    assert!(lsn >= 100, "{first}");

    let listed = ok(&ag.cli(&["store", "list-backups", "store", "--from", share_s]));
    assert!(listed.contains(first["file"].as_str().unwrap()), "{listed}");
    let verified = ok(&ag.cli(&["store", "verify-backup", "store", "--from", share_s]));
    assert!(verified.contains("ok"), "{verified}");

    let into = ag.dir.join("restored/store.sqlite");
    let restored = ok(&ag.cli(&[
        "store",
        "restore",
        "store",
        "--from",
        share_s,
        "--into",
        into.to_str().unwrap(),
    ]));
    assert!(restored.contains(&format!("at LSN {lsn}")), "{restored}");
    let live = ag.dir.join("data/s1/stores/store/store.sqlite");
    let (users, bindings) = contents(&into);
    assert_eq!((users.len(), bindings.len() >= 100), (200, true));
    assert_eq!(contents(&live), (users, bindings));

    // A damaged backup: verification names it and fails; nothing is restored from it.
    let file = share
        .join("store/full")
        .join(first["file"].as_str().unwrap());
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0x5a;
    std::fs::write(&file, &bad).unwrap();
    let out = ag.cli(&["store", "verify-backup", "store", "--from", share_s]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(!out.status.success(), "{text}");
    assert!(text.contains(first["file"].as_str().unwrap()), "{text}");
    let again = ag.dir.join("restored/again.sqlite");
    let out = ag.cli(&[
        "store",
        "restore",
        "store",
        "--from",
        share_s,
        "--into",
        again.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(!again.exists());
    std::fs::write(&file, &good).unwrap();

    // The LSN goes on across a failover: the new primary's backup starts where s1's was.
    ag.signal("s1", Signal::SIGKILL);
    ag.wait_primary("a new primary", |p| p != "s1");
    let out = ag.cli(&["store", "backup", "store", "--to", share_s, "--json"]);
    let taken: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    let second = taken["full"].clone();
    assert_ne!(second["server"], "s1", "{second}");
    assert!(
        second["lsn"].as_u64().unwrap() >= lsn,
        "{first} then {second}"
    );
    let listed = ok(&ag.cli(&[
        "store",
        "list-backups",
        "store",
        "--from",
        share_s,
        "--json",
    ]));
    let all: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    assert_eq!(all["full"].as_array().unwrap().len(), 2, "{all}");
}

/// A standalone store is backed up by the server that holds it, through the admin API; a
/// bad share name is refused with a clear error.
#[test]
fn a_standalone_store_is_backed_up_by_its_server() {
    let dir = test_dir(TMP, "backup_standalone");
    let server = Server::start(EXE.as_ref(), &dir, &Options::default());
    let share = dir.join("share");
    let (code, body) = admin_call(
        &server.admin,
        Some(&server.token),
        "POST",
        "/api/v1/stores/store1/backup",
        Some(serde_json::json!({"to": share})),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["full"]["server"], "fe1", "{body}");
    let m: store::backup::Manifest = serde_json::from_value(body["full"].clone()).unwrap();
    assert_eq!(store::backup::verify(&share, &m), Ok(()));
    // No share given and no log-shipping link: a clear refusal.
    let (code, body) = admin_call(
        &server.admin,
        Some(&server.token),
        "POST",
        "/api/v1/stores/store1/backup",
        Some(serde_json::json!({})),
    );
    assert_eq!(code, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("no backup share"),
        "{body}"
    );
    // A store nobody holds.
    let (code, _) = admin_call(
        &server.admin,
        Some(&server.token),
        "POST",
        "/api/v1/stores/nope/backup",
        Some(serde_json::json!({"to": share})),
    );
    assert_eq!(code, 404);
}

/// Log backups of an availability group under registrations, across `kill -9` of the
/// primary: the segments on the share run on without a gap or an overlap from the old
/// primary's to the new one's, every file verifies, and a restore of the whole chain equals
/// the new primary's database.
#[test]
fn log_backups_follow_a_failover_without_gap_or_duplicate() {
    let ag = ReplicatedLab::start(
        EXE.as_ref(),
        TMP,
        "backup_log",
        ag_topology(&[SYNC, SYNC, SYNC], &Options::default()),
        1000,
    );
    log_backups_across_a_kill(&ag, |new| {
        ag.dir.join(format!("data/{new}/stores/store/store.sqlite"))
    });
}

/// The same for high-safety mirroring (principal, mirror, witness): the chain goes on from
/// the principal's segments to the mirror's.
#[test]
fn log_backups_follow_a_mirroring_failover_without_gap_or_duplicate() {
    let lab = ReplicatedLab::start(
        EXE.as_ref(),
        TMP,
        "backup_log_mirror",
        mirroring_topology("high-safety", true, &Options::default()),
        1000,
    );
    log_backups_across_a_kill(&lab, |new| {
        lab.dir
            .join(format!("data/{new}/stores/store/store.sqlite"))
    });
}

/// The same for a failover cluster: the owner takes the segments from the shared database,
/// and after a kill of the owner, the next owner goes on.
#[test]
fn log_backups_follow_a_failover_cluster_owner_change_without_gap_or_duplicate() {
    let shared = test_dir(TMP, "backup_log_fc-shared");
    let lab = ReplicatedLab::start(
        EXE.as_ref(),
        TMP,
        "backup_log_fc",
        cluster_topology(3, false, &shared, &Options::default()),
        1000,
    );
    log_backups_across_a_kill(&lab, |_| shared.join("store.sqlite"));
}

/// Log backups under registrations, `kill -9` of `s1` (the initial primary, principal or
/// owner), more log backups by the new one, then the chain checked: no gap, no overlap,
/// segments by both, every file verifies, and a restore equals `live(new)`'s database.
fn log_backups_across_a_kill(ag: &ReplicatedLab, live: impl Fn(&str) -> std::path::PathBuf) {
    ag.wait_primary("a primary", |p| p == "s1");
    let share = ag.dir.join("share");
    let share_s = share.to_str().unwrap();
    let log_backup = || -> serde_json::Value {
        let out = ag.cli(&[
            "store", "backup", "store", "--to", share_s, "--log", "--json",
        ]);
        serde_json::from_str(ok(&out).trim()).unwrap()
    };
    let load = RegisterLoad::start(ag.sip, 2, 1000, "pw");
    let mut seen = 0;
    for round in 0..3 {
        seen += 50;
        assert!(load.wait_for(seen, Duration::from_secs(60)));
        let b = log_backup();
        // The first one starts the chain with a full backup.
        assert_eq!(b["full"].is_object(), round == 0, "{b}");
    }
    ag.signal("s1", Signal::SIGKILL);
    let new = ag.wait_primary("a new primary", |p| p != "s1")["primary"]
        .as_str()
        .unwrap()
        .to_string();
    seen = load.records.lock().unwrap().len() + 50;
    assert!(load.wait_for(seen, Duration::from_secs(60)));
    let b = log_backup();
    assert_eq!(b["segment"]["server"], new.as_str(), "{b}");
    let records = load.stop();
    assert!(records.iter().any(|r| r.status == 200));
    log_backup();

    let listed = ok(&ag.cli(&[
        "store",
        "list-backups",
        "store",
        "--from",
        share_s,
        "--json",
    ]));
    let all: serde_json::Value = serde_json::from_str(listed.trim()).unwrap();
    let segs = all["log"].as_array().unwrap();
    assert!(segs.len() >= 4, "{all}");
    for w in segs.windows(2) {
        assert_eq!(
            w[1]["first"].as_u64().unwrap(),
            w[0]["last"].as_u64().unwrap() + 1,
            "a gap or an overlap between {} and {}",
            w[0],
            w[1]
        );
    }
    assert!(
        segs.iter().any(|s| s["server"] == "s1")
            && segs.iter().any(|s| s["server"] == new.as_str())
    );
    let verified = ok(&ag.cli(&["store", "verify-backup", "store", "--from", share_s]));
    assert!(!verified.contains("BAD"), "{verified}");

    let into = ag.dir.join("restored/store.sqlite");
    let out = ag.cli(&[
        "store",
        "restore",
        "store",
        "--from",
        share_s,
        "--into",
        into.to_str().unwrap(),
        "--json",
    ]);
    let restored: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!(
        restored["lsn"].as_u64().unwrap(),
        segs.last().unwrap()["last"].as_u64().unwrap()
    );
    assert_eq!(contents(&into), contents(&live(&new)));
}
