//! Log shipping with real servers: `fe1` in site dc1 serves store `store1`; `dr1` in site dc2
//! holds its log-shipped copy `store1-dr`. The primary's backup job ships the transaction
//! log every second; the secondary's copy and restore jobs bring it over after the
//! configured delay; `tandem logship status` reports it.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use nix::sys::signal::Signal;
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::time::{Duration, Instant};
use testkit::replicated::ReplicatedLab;
use testkit::{
    AgReplica, DOMAIN, Lab, LabServer, Options, RegisterLoad, Ua, admin_call, ag_topology,
    free_port, test_dir,
};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// The two-site topology, with the restore delay given; returns it with fe1's and dr1's
/// admin ports.
fn topology(delay_s: u64) -> (String, u16, u16) {
    let (sip, fe_admin, dr_admin, fe_rpc, dr_rpc) = (
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
        free_port("127.0.0.1"),
    );
    let text = format!(
        r#"name = "logship"
sip_domain = "{DOMAIN}"
[[site]]
name = "dc1"
[[site]]
name = "dc2"
[[server]]
name = "fe1"
site = "dc1"
sip_udp = "127.0.0.1:{sip}"
rpc = "127.0.0.1:{fe_rpc}"
admin = "127.0.0.1:{fe_admin}"
[[server]]
name = "dr1"
site = "dc2"
rpc = "127.0.0.1:{dr_rpc}"
admin = "127.0.0.1:{dr_admin}"
[[pool]]
name = "pool1"
kind = "frontend"
site = "dc1"
servers = ["fe1"]
store = "store1"
routing_groups = 1
[[store]]
name = "store1"
site = "dc1"
mode = "standalone"
[[store.replica]]
server = "fe1"
role = "primary"
[[store]]
name = "store1-dr"
site = "dc2"
mode = "standalone"
[[store.replica]]
server = "dr1"
role = "primary"
[[log_shipping]]
name = "store1-dr"
primary = "store1"
secondary = "store1-dr"
share = "share"
backup_interval_s = 1
copy_interval_s = 1
restore_interval_s = 1
restore_delay_s = {delay_s}
backup_alert_s = 5
restore_alert_s = 60
secondary_mode = "standby"
retention_h = 1
"#
    );
    (text, fe_admin, dr_admin)
}

/// `POST /api/v1/users` of `aor` (password "pw") on a server: the status and the body.
fn add_user(admin: &std::net::SocketAddr, token: &str, aor: &str) -> (u16, serde_json::Value) {
    admin_call(
        admin,
        Some(token),
        "POST",
        "/api/v1/users",
        Some(serde_json::json!({"aor": aor, "password": "pw"})),
    )
}

/// When `aor` is a user of the secondary's database (None while it is not, or not there yet).
fn present(db: &Path, aor: &str) -> bool {
    let Ok(c) = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY) else {
        return false;
    };
    c.query_row("SELECT count(*) FROM users WHERE aor = ?1", [aor], |r| {
        r.get::<_, i64>(0)
    })
    .is_ok_and(|n| n == 1)
}

/// The two sites of [`topology`] running as a lab: `fe1`'s and `dr1`'s admin addresses.
struct Sites {
    dir: std::path::PathBuf,
    path: std::path::PathBuf,
    lab: Lab,
    fe: std::net::SocketAddr,
    dr: std::net::SocketAddr,
}

impl Sites {
    fn start(name: &str, delay_s: u64) -> Sites {
        let dir = test_dir(TMP, name);
        let (text, fe_admin, dr_admin) = topology(delay_s);
        let path = dir.join("topology.toml");
        std::fs::write(&path, text).unwrap();
        let lab = Lab::up(EXE.as_ref(), &path, &dir.join("data"), &[]);
        Sites {
            fe: format!("127.0.0.1:{fe_admin}").parse().unwrap(),
            dr: format!("127.0.0.1:{dr_admin}").parse().unwrap(),
            dir,
            path,
            lab,
        }
    }

    /// `kill -9` of one of the lab's servers.
    fn kill(&self, server: &str) {
        let pid = self
            .lab
            .servers
            .iter()
            .find(|s| s["server"] == server)
            .and_then(|s| s["pid"].as_i64())
            .unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
    }
}

/// With a restore delay of D seconds, users added on the primary reach the secondary, and
/// none of them sooner than D after the primary acknowledged it. `logship status` then shows
/// the link with the last backup, copy and restore, no lag and no alert; once the primary's
/// server is killed, it raises the backup alert.
#[test]
fn shipped_transactions_appear_after_the_restore_delay() {
    const DELAY_S: u64 = 2;
    let sites = Sites::start("logship_delay", DELAY_S);
    let (dir, token, fe, dr) = (sites.dir.clone(), sites.lab.token(), sites.fe, sites.dr);
    let db = dir.join("data/dr1/stores/store1-dr/store.sqlite");
    // Two rounds: the first reaches the secondary in the full backup that seeds it, the
    // second in log segments. Each user must appear no sooner than the delay after its
    // acknowledgement.
    for round in 0..2 {
        let mut acked = Vec::new();
        for i in 0..3 {
            let aor = format!("sip:ship{round}-{i}@{DOMAIN}");
            let (code, body) = add_user(&fe, &token, &aor);
            assert_eq!(code, 201, "{body}");
            acked.push((aor, Instant::now()));
        }
        let end = Instant::now() + Duration::from_secs(60);
        let mut seen: Vec<Option<Instant>> = vec![None; acked.len()];
        while seen.iter().any(Option::is_none) {
            assert!(
                Instant::now() < end,
                "not all users reached the secondary: {seen:?}"
            );
            for (i, (aor, _)) in acked.iter().enumerate() {
                if seen[i].is_none() && present(&db, aor) {
                    seen[i] = Some(Instant::now());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for ((aor, at), seen) in acked.iter().zip(&seen) {
            let after = seen.unwrap().duration_since(*at);
            assert!(
                after >= Duration::from_secs(DELAY_S),
                "{aor} reached the secondary {after:?} after it was acknowledged: sooner than the {DELAY_S} s delay"
            );
        }
    }
    // The primary's side: once everything is shipped, nothing is at risk.
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (code, st) = admin_call(&fe, Some(&token), "GET", "/api/v1/logship", None);
        assert_eq!(code, 200, "{st}");
        let p = &st[0];
        assert_eq!(p["side"], "primary", "{st}");
        assert!(p["primary_lsn"].as_u64().unwrap() >= 6, "{st}");
        if p["lag_tx"] == 0 && p["lag_s"] == 0.0 {
            break;
        }
        assert!(Instant::now() < end, "commands stay unshipped: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The second round came in a segment.
    let segments = std::fs::read_dir(dir.join("data/share/store1/log"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "seg"))
                .count()
        })
        .unwrap_or(0);
    assert!(segments >= 1, "no log segment was shipped");
    let (code, st) = admin_call(&dr, Some(&token), "GET", "/api/v1/logship", None);
    assert_eq!(code, 200, "{st}");
    let link = &st[0];
    assert_eq!(
        (&link["primary"], &link["secondary"]),
        (
            &serde_json::json!("store1"),
            &serde_json::json!("store1-dr")
        ),
        "{st}"
    );
    assert!(link["last_backup_lsn"].as_u64().unwrap() >= 5, "{st}");
    assert!(link["last_restored_lsn"].as_u64().unwrap() >= 5, "{st}");
    assert_eq!(link["alert"], false, "{st}");
    assert!(link["lag_s"].as_f64().is_some(), "{st}");
    // The same through the CLI.
    let out = std::process::Command::new(EXE)
        .args([
            "logship",
            "status",
            "--admin",
            &dr.to_string(),
            "--token-file",
        ])
        .arg(dir.join("data/admin.token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("store1 → store1-dr"),
        "{text}"
    );

    // Site A lost: no more backups, and the monitor says so once the 5 s threshold passed.
    sites.kill("fe1");
    let end = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, st) = admin_call(&dr, Some(&token), "GET", "/api/v1/logship", None);
        if st[0]["alert"] == true {
            let alerts = st[0]["alerts"].to_string();
            assert!(alerts.contains("no log backup for more than 5 s"), "{st}");
            // And as a Prometheus metric.
            let (_, metrics) = admin_call(&dr, Some(&token), "GET", "/metrics", None);
            let text = metrics.as_str().unwrap_or_default().to_string();
            assert!(
                text.contains("tandem_logship_alert{link=\"store1-dr\"} 1"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < end, "no alert without backups: {st}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Site A lost: every process of it killed with `kill -9` right after more users were
/// added. `tandem logship failover` with the primary's database file still readable takes a
/// tail-log backup first, so the secondary comes online with every acknowledged user, and
/// takes writes. The old primary's server then refuses to start: it was failed over.
#[test]
fn failover_with_a_tail_log_backup_loses_nothing_and_fences_the_old_primary() {
    let sites = Sites::start("logship_failover", 0);
    let (dir, token, fe, dr) = (sites.dir.clone(), sites.lab.token(), sites.fe, sites.dr);
    let db = dir.join("data/dr1/stores/store1-dr/store.sqlite");
    let add = |admin: &std::net::SocketAddr, aor: &str| add_user(admin, &token, aor);
    let mut acked = Vec::new();
    for i in 0..10 {
        let aor = format!("sip:dr{i}@{DOMAIN}");
        assert_eq!(add(&fe, &aor).0, 201);
        acked.push(aor);
    }
    // The first users are shipped and restored; the last ones are added right before the
    // site is lost, after the last backup.
    let end = Instant::now() + Duration::from_secs(60);
    while !present(&db, &acked[0]) {
        assert!(Instant::now() < end, "nothing reached the secondary");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 10..15 {
        let aor = format!("sip:dr{i}@{DOMAIN}");
        assert_eq!(add(&fe, &aor).0, 201);
        acked.push(aor);
    }
    sites.kill("fe1");
    let primary_db = dir.join("data/fe1/stores/store1/store.sqlite");
    let out = std::process::Command::new(EXE)
        .args(["logship", "failover", "store1-dr", "--tail-from"])
        .arg(&primary_db)
        .args(["--json", "--admin", &dr.to_string(), "--token-file"])
        .arg(dir.join("data/admin.token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(report["tail_taken"], true, "{report}");
    assert!(report["stopped"].is_null(), "{report}");
    // Every acknowledged user is on the secondary, which now takes writes.
    let (code, users) = admin_call(&dr, Some(&token), "GET", "/api/v1/users", None);
    assert_eq!(code, 200, "{users}");
    let have: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["aor"].as_str())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|a| !have.contains(&a.as_str()))
        .collect();
    assert!(lost.is_empty(), "acknowledged users lost: {lost:?}");
    assert_eq!(add(&dr, &format!("sip:after@{DOMAIN}")).0, 201);
    // The old primary's server refuses to serve its store again.
    let out = std::process::Command::new(EXE)
        .args(["server", "--topology"])
        .arg(&sites.path)
        .args(["--name", "fe1", "--data"])
        .arg(dir.join("data/fe1"))
        .arg("--admin-token-file")
        .arg(dir.join("data/admin.token"))
        .arg("--cluster-secret-file")
        .arg(dir.join("data/cluster.secret"))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("was failed over to `store1-dr`"), "{err}");
}

/// Site A lost with no tail-log backup possible: the failover loses at most what the
/// primary's side reported as not yet shipped, read just before the kill (no write came
/// after it), and the report names the loss.
#[test]
fn failover_without_a_tail_loses_no_more_than_the_reported_lag() {
    let sites = Sites::start("logship_rpo", 0);
    let (dir, token, fe, dr) = (sites.dir.clone(), sites.lab.token(), sites.fe, sites.dr);
    let add = |aor: &str| add_user(&fe, &token, aor).0;
    let mut acked = Vec::new();
    // A first user shipped and restored, so the secondary exists.
    assert_eq!(add(&format!("sip:rpo0@{DOMAIN}")), 201);
    acked.push(format!("sip:rpo0@{DOMAIN}"));
    let db = dir.join("data/dr1/stores/store1-dr/store.sqlite");
    let end = Instant::now() + Duration::from_secs(60);
    while !present(&db, &acked[0]) {
        assert!(Instant::now() < end, "nothing reached the secondary");
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 1..40 {
        let aor = format!("sip:rpo{i}@{DOMAIN}");
        assert_eq!(add(&aor), 201);
        acked.push(aor);
    }
    let (_, st) = admin_call(&fe, Some(&token), "GET", "/api/v1/logship", None);
    let reported = st[0]["lag_tx"].as_u64().unwrap();
    sites.kill("fe1");
    let (code, report) = admin_call(
        &dr,
        Some(&token),
        "POST",
        "/api/v1/logship/store1-dr/failover",
        Some(serde_json::json!({})),
    );
    assert_eq!(code, 200, "{report}");
    assert_eq!(report["tail_taken"], false, "{report}");
    assert!(
        report["tail"].as_str().unwrap().contains("are lost"),
        "{report}"
    );
    let (_, users) = admin_call(&dr, Some(&token), "GET", "/api/v1/users", None);
    let have: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["aor"].as_str())
        .collect();
    let lost = acked.iter().filter(|a| !have.contains(&a.as_str())).count() as u64;
    eprintln!("reported not shipped: {reported}; lost: {lost}");
    assert!(
        lost <= reported,
        "{lost} acknowledged users lost, but the primary reported {reported} unshipped"
    );
}

/// Site A cut off rather than lost: the link is failed over while the old primary's server
/// still runs. Within a backup interval it sees the failover on the share and refuses every
/// write from then on, so the two sites never both take writes for long.
#[test]
fn a_running_old_primary_stops_taking_writes_once_failed_over() {
    let sites = Sites::start("logship_cutoff", 0);
    let (dir, token, fe, dr) = (sites.dir.clone(), sites.lab.token(), sites.fe, sites.dr);
    let add = |aor: &str| add_user(&fe, &token, aor);
    assert_eq!(add(&format!("sip:cut0@{DOMAIN}")).0, 201);
    let db = dir.join("data/dr1/stores/store1-dr/store.sqlite");
    let end = Instant::now() + Duration::from_secs(60);
    while !present(&db, &format!("sip:cut0@{DOMAIN}")) {
        assert!(Instant::now() < end, "nothing reached the secondary");
        std::thread::sleep(Duration::from_millis(20));
    }
    let primary_db = dir.join("data/fe1/stores/store1/store.sqlite");
    let (code, report) = admin_call(
        &dr,
        Some(&token),
        "POST",
        "/api/v1/logship/store1-dr/failover",
        Some(serde_json::json!({"tail_from": primary_db})),
    );
    assert_eq!(code, 200, "{report}");
    let end = Instant::now() + Duration::from_secs(60);
    let mut n = 1;
    loop {
        n += 1;
        let (code, body) = add(&format!("sip:cut{n}@{DOMAIN}"));
        if code != 201 {
            assert_eq!(code, 503, "{body}");
            assert!(body.to_string().contains("takes no writes"), "{body}");
            break;
        }
        assert!(
            Instant::now() < end,
            "the old primary still takes writes after the failover"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `tandem logship …` against a server's admin API with `--json`; the parsed output.
fn cli(dir: &Path, admin: &std::net::SocketAddr, args: &[&str]) -> serde_json::Value {
    let out = std::process::Command::new(EXE)
        .arg("logship")
        .args(args)
        .args(["--json", "--admin", &admin.to_string(), "--token-file"])
        .arg(dir.join("data/admin.token"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "logship {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap()
}

/// Waits until `aor` is in the database file `db`.
fn wait_present(db: &Path, aor: &str, what: &str) {
    let end = Instant::now() + Duration::from_secs(60);
    while !present(db, aor) {
        assert!(Instant::now() < end, "{aor} never reached {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The whole disaster-recovery cycle. Site A is lost and the link failed over to site B,
/// which serves. The roles are reversed: B ships its log to A, whose server, started again,
/// sets A's old database aside and reseeds it; A's standby is readable with its staleness,
/// and A's front end refuses writes. A planned failback then loses no acknowledged user,
/// the store that handed over refuses writes, and a second reversal ships from A to B
/// again, B reseeded.
#[test]
fn roles_reverse_and_a_planned_failback_loses_nothing() {
    let sites = Sites::start("logship_failback", 0);
    let (dir, token, fe, dr) = (sites.dir.clone(), sites.lab.token(), sites.fe, sites.dr);
    let data = dir.join("data");
    let a_db = data.join("fe1/stores/store1/store.sqlite");
    let b_db = data.join("dr1/stores/store1-dr/store.sqlite");
    let add = |admin: &std::net::SocketAddr, aor: &str| add_user(admin, &token, aor);
    let users = |admin: &std::net::SocketAddr| -> Vec<String> {
        let (code, v) = admin_call(admin, Some(&token), "GET", "/api/v1/users", None);
        assert_eq!(code, 200, "{v}");
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|u| u["aor"].as_str().map(String::from))
            .collect()
    };
    let mut acked = Vec::new();
    for i in 0..5 {
        let aor = format!("sip:a{i}@{DOMAIN}");
        assert_eq!(add(&fe, &aor).0, 201);
        acked.push(aor);
    }
    wait_present(&b_db, &acked[4], "the secondary");

    // Site A lost; B online with a tail-log backup of A's disk.
    sites.kill("fe1");
    let r = cli(
        &dir,
        &dr,
        &[
            "failover",
            "store1-dr",
            "--tail-from",
            a_db.to_str().unwrap(),
        ],
    );
    assert_eq!(r["tail_taken"], true, "{r}");
    for i in 0..5 {
        let aor = format!("sip:b{i}@{DOMAIN}");
        assert_eq!(add(&dr, &aor).0, 201);
        acked.push(aor);
    }
    let before_last_b = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let last_b = format!("sip:b5@{DOMAIN}");
    assert_eq!(add(&dr, &last_b).0, 201);
    acked.push(last_b.clone());

    // Reverse: B ships to A; A's server, started again, reseeds A.
    let r = cli(&dir, &dr, &["reverse", "store1-dr"]);
    assert_eq!(r["primary"], "store1-dr", "{r}");
    assert_eq!(r["secondary"], "store1", "{r}");
    let _fe1 = LabServer::start(EXE.as_ref(), &sites.path, &data, "fe1").unwrap();
    wait_present(&a_db, &last_b, "the reseeded old primary");
    let set_aside = std::fs::read_dir(data.join("fe1/stores/store1"))
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("store.sqlite.replaced-")
        });
    assert!(set_aside, "the old primary's database was not set aside");
    let st = cli(&dir, &fe, &["status"]);
    assert_eq!(st[0]["side"], "secondary", "{st}");
    assert_eq!(st[0]["primary"], "store1-dr", "{st}");
    assert_eq!(st[0]["state"], "shipping", "{st}");
    // A's front end does not write until the link is failed back.
    let (code, body) = add(&fe, &format!("sip:early@{DOMAIN}"));
    assert_eq!(code, 503, "{body}");

    // The standby is readable, and says how stale it may be.
    let (code, v) = admin_call(
        &fe,
        Some(&token),
        "GET",
        "/api/v1/logship/store1-dr/users",
        None,
    );
    assert_eq!(code, 200, "{v}");
    let read: Vec<&str> = v["users"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["aor"].as_str())
        .collect();
    assert!(read.contains(&last_b.as_str()), "{v}");
    let until = v["complete_until_ms"].as_u64().unwrap();
    assert!(
        until >= before_last_b,
        "{v}: holds {last_b}, so it is complete past its commit"
    );
    assert!(v["staleness_s"].as_f64().unwrap() >= 0.0, "{v}");

    // More writes on B, then a planned failback to A: nothing lost.
    for i in 0..5 {
        let aor = format!("sip:c{i}@{DOMAIN}");
        assert_eq!(add(&dr, &aor).0, 201);
        acked.push(aor);
    }
    let r = cli(&dir, &fe, &["failover", "store1-dr", "--planned"]);
    assert_eq!(r["tail_taken"], true, "{r}");
    assert!(r["tail"].as_str().unwrap().contains("hand-over"), "{r}");
    let have = users(&fe);
    let lost: Vec<&String> = acked.iter().filter(|a| !have.contains(a)).collect();
    assert!(
        lost.is_empty(),
        "acknowledged users lost in the failback: {lost:?}"
    );
    let (code, body) = add(&dr, &format!("sip:late@{DOMAIN}"));
    assert_eq!(code, 503, "B still takes writes after handing over: {body}");
    assert!(body.to_string().contains("takes no writes"), "{body}");
    let d0 = format!("sip:d0@{DOMAIN}");
    assert_eq!(add(&fe, &d0).0, 201);

    // Reverse again: A ships to B, whose server reseeds B.
    let r = cli(&dir, &fe, &["reverse", "store1-dr"]);
    assert_eq!(r["primary"], "store1", "{r}");
    sites.kill("dr1");
    let _dr1 = LabServer::start(EXE.as_ref(), &sites.path, &data, "dr1").unwrap();
    wait_present(&b_db, &d0, "the reseeded site B");
    let st = cli(&dir, &dr, &["status"]);
    assert_eq!(st[0]["primary"], "store1", "{st}");
    assert_eq!(st[0]["epoch"], 4, "{st}");
}

/// A planned failover away from an availability group under SIP registrations: the group's
/// primary closes its writes and ships its last log backup, so every acknowledged
/// registration is on the secondary, and none is acknowledged after the failover returns.
/// The closing is replicated: after `kill -9` of the group's primary, the new primary
/// refuses writes too.
#[test]
fn an_availability_group_hands_over_under_load_and_stays_closed_after_its_primary_dies() {
    let (text, fe_admin, dr_admin) = ag_with_dr();
    let ag = ReplicatedLab::start(EXE.as_ref(), TMP, "logship_ag", (text, fe_admin), 1000);
    ag.wait_primary("a primary", |p| p == "s1");
    let dr: std::net::SocketAddr = format!("127.0.0.1:{dr_admin}").parse().unwrap();
    // The secondary is seeded (the lab's users are in the chain's first full backup).
    let b_db = ag.dir.join("data/dr1/stores/store-dr/store.sqlite");
    wait_present(&b_db, &format!("sip:user0001@{DOMAIN}"), "the secondary");
    let load = RegisterLoad::start(ag.sip, 2, 1000, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    let r = cli(&ag.dir, &dr, &["failover", "dr", "--planned"]);
    let returned = Instant::now();
    assert_eq!(r["tail_taken"], true, "{r}");
    let seen = load.records.lock().unwrap().len();
    assert!(load.wait_for(seen + 20, Duration::from_secs(60)));
    let records = load.stop();
    let acked: Vec<_> = records.iter().filter(|r| r.status == 200).collect();
    assert!(acked.len() >= 100);
    let after: Vec<_> = records
        .iter()
        .filter(|r| r.sent >= returned && r.status == 200)
        .map(|r| &r.user)
        .collect();
    assert!(
        after.is_empty(),
        "acknowledged after the hand-over: {after:?}"
    );
    // Every acknowledged registration is on the secondary, now online.
    let c = Connection::open_with_flags(&b_db, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|r| {
            let aor = format!("sip:{}@{DOMAIN}", r.user);
            let bound: Vec<String> = c
                .prepare("SELECT contact FROM bindings WHERE aor = ?1")
                .unwrap()
                .query_map([&aor], |row| row.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            !bound
                .iter()
                .any(|b| b.split(';').next() == r.contact.split(';').next())
        })
        .map(|r| &r.user)
        .collect();
    assert!(lost.is_empty(), "acknowledged registrations lost: {lost:?}");
    // The group's new primary, after a kill of the old one, refuses writes as well.
    ag.signal("s1", Signal::SIGKILL);
    ag.wait_primary("a new primary", |p| p != "s1");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let resp = Ua::udp(ag.sip, "user0999", "pw", DOMAIN).register(3600);
        assert_ne!(
            resp.status, 200,
            "the new primary of the failed-over group took a write"
        );
        if resp.status == 503 && resp.reason.contains("no writes") {
            break;
        }
        // Anything else: the front end is still finding the new primary.
        assert!(
            Instant::now() < end,
            "last answer {} {}",
            resp.status,
            resp.reason
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// An availability group `store` on `s1`…`s3` behind front end `fe1` in site dc1, log-shipped
/// (1 s intervals, no delay, standby) by link `dr` to the standalone store `store-dr` on `dr1`
/// in site dc2: the topology, fe1's admin port and dr1's.
fn ag_with_dr() -> (String, u16, u16) {
    const SYNC: AgReplica = AgReplica {
        sync: true,
        automatic: true,
        readable: false,
    };
    let (mut text, fe_admin) = ag_topology(&[SYNC, SYNC, SYNC], &Options::default());
    let (dr_admin, dr_rpc) = (free_port("127.0.0.1"), free_port("127.0.0.1"));
    text.push_str(&format!(
        r#"[[site]]
name = "dc2"
[[server]]
name = "dr1"
site = "dc2"
rpc = "127.0.0.1:{dr_rpc}"
admin = "127.0.0.1:{dr_admin}"
[[store]]
name = "store-dr"
site = "dc2"
mode = "standalone"
[[store.replica]]
server = "dr1"
role = "primary"
[[log_shipping]]
name = "dr"
primary = "store"
secondary = "store-dr"
share = "share"
backup_interval_s = 1
copy_interval_s = 1
restore_interval_s = 1
restore_delay_s = 0
backup_alert_s = 5
restore_alert_s = 60
secondary_mode = "standby"
retention_h = 1
"#
    ));
    (text, fe_admin, dr_admin)
}

/// The lab server `name`'s admin address.
fn admin_of(lab: &Lab, name: &str) -> std::net::SocketAddr {
    lab.servers
        .iter()
        .find(|s| s["server"] == name)
        .and_then(|s| s["admin"].as_str())
        .and_then(|a| a.parse().ok())
        .unwrap()
}

/// Fail-back into an availability group. Site A (the group's three replicas and its front
/// end) is lost and the link fails over to site B, which takes writes; the roles are
/// reversed, and site A's servers, started again, set their replicas aside and each restore
/// a seed from B's chain. A planned failover run on one of them brings the group back from
/// those seeds: every user acknowledged on either site is there, the front end writes
/// through the group again, all three replicas hold the same data, and B refuses writes.
#[test]
fn a_failback_reseeds_an_availability_group_from_the_dr_site() {
    let (text, fe_admin, dr_admin) = ag_with_dr();
    let ag = ReplicatedLab::start(EXE.as_ref(), TMP, "logship_ag_back", (text, fe_admin), 5);
    ag.wait_primary("a primary", |p| p == "s1");
    let (dir, token) = (ag.dir.clone(), ag.token.clone());
    let data = dir.join("data");
    let dr: std::net::SocketAddr = format!("127.0.0.1:{dr_admin}").parse().unwrap();
    let s1 = admin_of(&ag.lab, "s1");
    let add = |admin: &std::net::SocketAddr, aor: &str| add_user(admin, &token, aor);
    let mut acked = Vec::new();
    for i in 0..5 {
        let aor = format!("sip:ga{i}@{DOMAIN}");
        assert_eq!(add(&ag.admin, &aor).0, 201);
        acked.push(aor);
    }
    let b_db = data.join("dr1/stores/store-dr/store.sqlite");
    wait_present(&b_db, &acked[4], "the secondary");
    for server in ["fe1", "s1", "s2", "s3"] {
        ag.signal(server, Signal::SIGKILL);
    }
    let tail = data.join("s1/stores/store/store.sqlite");
    let r = cli(
        &dir,
        &dr,
        &["failover", "dr", "--tail-from", tail.to_str().unwrap()],
    );
    assert_eq!(r["tail_taken"], true, "{r}");
    for i in 0..5 {
        let aor = format!("sip:gb{i}@{DOMAIN}");
        assert_eq!(add(&dr, &aor).0, 201);
        acked.push(aor);
    }
    cli(&dir, &dr, &["reverse", "dr"]);
    let topology = dir.join("topology.toml");
    let _servers: Vec<LabServer> = ["s1", "s2", "s3", "fe1"]
        .iter()
        .map(|n| LabServer::start(EXE.as_ref(), &topology, &data, n).unwrap())
        .collect();
    for n in ["s1", "s2", "s3"] {
        let seed = data.join(format!("{n}/stores/store/seed.sqlite"));
        wait_present(&seed, &acked[9], &format!("{n}'s seed"));
    }
    for i in 5..8 {
        let aor = format!("sip:gc{i}@{DOMAIN}");
        assert_eq!(add(&dr, &aor).0, 201);
        acked.push(aor);
    }
    let r = cli(&dir, &s1, &["failover", "dr", "--planned"]);
    assert!(r["tail"].as_str().unwrap().contains("hand-over"), "{r}");
    assert!(r["stopped"].is_null(), "{r}");
    // The group serves again through its front end, with every acknowledged user.
    let (code, users) = admin_call(&ag.admin, Some(&token), "GET", "/api/v1/users", None);
    assert_eq!(code, 200, "{users}");
    let have: Vec<&str> = users
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["aor"].as_str())
        .collect();
    let lost: Vec<&String> = acked
        .iter()
        .filter(|a| !have.contains(&a.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged users lost in the failback: {lost:?}"
    );
    let back = format!("sip:gd0@{DOMAIN}");
    assert_eq!(add(&ag.admin, &back).0, 201);
    for n in ["s1", "s2", "s3"] {
        let db = data.join(format!("{n}/stores/store/store.sqlite"));
        wait_present(&db, &back, &format!("{n}'s replica"));
    }
    let (code, body) = add(&dr, &format!("sip:late@{DOMAIN}"));
    assert_eq!(code, 503, "B still takes writes after handing over: {body}");
    // Reversed again on the group's primary, the link ships from the group to B, reseeded.
    let primary = ag.wait_primary("a primary", |_| true)["primary"]
        .as_str()
        .unwrap()
        .to_string();
    let r = cli(&dir, &admin_of(&ag.lab, &primary), &["reverse", "dr"]);
    assert_eq!(r["primary"], "store", "{r}");
    ag.signal("dr1", Signal::SIGKILL);
    let _dr1 = LabServer::start(EXE.as_ref(), &topology, &data, "dr1").unwrap();
    wait_present(&b_db, &back, "site B, reseeded from the group");
}

/// A failover to a secondary that holds nothing (its restore delay has not let it seed)
/// and has no full backup to start from (the share lost it) is refused before the primary is
/// asked for anything: the primary goes on taking writes.
#[test]
fn a_failover_to_an_unseeded_secondary_changes_nothing() {
    let sites = Sites::start("logship_unseeded", 3600);
    let (token, fe, dr) = (sites.lab.token(), sites.fe, sites.dr);
    let add = |aor: &str| add_user(&fe, &token, aor).0;
    assert_eq!(add(&format!("sip:u0@{DOMAIN}")), 201);
    // Once a log segment reached the secondary's copy folder, the chain's full backup is
    // there and on the share, and no new one is taken for half the retention: both are lost.
    let copied = sites.dir.join("data/dr1/stores/store1-dr/logship/store1");
    // (Commands applied before the chain starts are in its full backup, not in a segment:
    // a few more writes make one.)
    let mut n = 0;
    while !std::fs::read_dir(copied.join("log")).is_ok_and(|d| {
        d.filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().ends_with(".json"))
    }) {
        n += 1;
        assert!(n < 120, "no log segment reached the secondary");
        assert_eq!(add(&format!("sip:w{n}@{DOMAIN}")), 201);
        std::thread::sleep(Duration::from_millis(500));
    }
    std::fs::remove_dir_all(sites.dir.join("data/share/store1/full")).unwrap();
    std::fs::remove_dir_all(copied.join("full")).unwrap();
    for planned in [false, true] {
        let (code, body) = admin_call(
            &dr,
            Some(&token),
            "POST",
            "/api/v1/logship/store1-dr/failover",
            Some(serde_json::json!({"planned": planned})),
        );
        assert_eq!(code, 409, "{body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .contains("holds nothing yet"),
            "{body}"
        );
    }
    assert_eq!(add(&format!("sip:u1@{DOMAIN}")), 201);
    let (_, st) = admin_call(&fe, Some(&token), "GET", "/api/v1/logship", None);
    assert_eq!(st[0]["state"], "shipping", "{st}");
    assert_eq!(st[0]["epoch"], 0, "{st}");
}
