//! Durability across `kill -9`: what a 200 OK acknowledged is still there after the server
//! is killed mid-load and started again.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::time::{Duration, Instant};
use testkit::{Options, Server, sipp, test_dir};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");

/// SIPp registers users at a steady rate; the server is killed with SIGKILL mid-run and
/// restarted while SIPp keeps going. Every REGISTER that got a 200 OK (before or after the
/// kill) must still be bound afterwards: count both and assert equality.
#[test]
fn acknowledged_registrations_survive_kill_9() {
    if !sipp::require() {
        return;
    }
    let dir = test_dir(TMP, "crash_kill9");
    // SIPp 3.6 answers only the first challenge, and knows only MD5.
    let options = Options {
        digest_algorithms: vec!["MD5", "SHA-256"],
        ..Options::default()
    };
    let mut server = Server::start(EXE.as_ref(), &dir, &options);
    const USERS: usize = 1500;
    for i in 0..USERS {
        server.add_user(&format!("crash{i:04}"), "pw");
    }
    let lines: Vec<String> = (0..USERS)
        .map(|i| format!("crash{i:04};pw;{}", testkit::DOMAIN))
        .collect();
    let inf = sipp::injection(&dir, "users.csv", &lines);
    let target = server.sip.to_string();
    let sipp_dir = dir.clone();
    let sipp_port = testkit::free_port("127.0.0.1").to_string();
    let load = std::thread::spawn(move || {
        let args: Vec<String> = [
            "-inf",
            inf.to_str().unwrap(),
            "-m",
            &USERS.to_string(),
            "-r",
            "150",
            "-l",
            "300",
            "-i",
            "127.0.0.1",
            "-p",
            &sipp_port,
            "-recv_timeout",
            "4000",
            &target,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        sipp::run(&sipp_dir, "register", "register.xml", &args, 120)
    });

    // Kill once a few hundred registrations are durable (users were commands too).
    let registered_before_kill = |s: &Server| {
        s.metric("tandem_store_applied_total")
            .saturating_sub(USERS as u64)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while registered_before_kill(&server) < 300 {
        assert!(
            Instant::now() < deadline,
            "the load never reached 300 registrations"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed_at = Instant::now();
    server.kill9();
    server.restart();
    eprintln!("killed and restarted in {:?}", killed_at.elapsed());

    let run = load.join().expect("sipp thread");
    let acked: Vec<(String, String)> = run
        .log_lines()
        .iter()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            match (parts.next(), parts.next(), parts.next()) {
                (Some("ok"), Some(user), Some(contact_user)) => {
                    Some((user.to_string(), contact_user.to_string()))
                }
                _ => None,
            }
        })
        .collect();
    assert!(
        acked.len() >= 300,
        "SIPp saw {} registrations acknowledged: {}",
        acked.len(),
        run.errors
    );
    let mut survived = 0;
    let mut lost = Vec::new();
    for (user, contact_user) in &acked {
        let contacts = server.contacts(user);
        if contacts
            .iter()
            .any(|c| c.starts_with(&format!("sip:{contact_user}@")))
        {
            survived += 1;
        } else {
            lost.push(format!("{user} ({contact_user})"));
        }
    }
    eprintln!(
        "acknowledged {}, survived {survived}, calls failed around the kill: see {}",
        acked.len(),
        dir.display()
    );
    assert_eq!(
        survived,
        acked.len(),
        "acknowledged registrations lost: {lost:?}"
    );
}
