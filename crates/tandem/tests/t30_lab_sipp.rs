//! Interop with SIPp against a running lab (`tandem lab up`), and the lab's own promises:
//! JSON for scripts, state kept across restarts, servers stopped with it.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::path::Path;
use testkit::{Lab, Options, alive, free_port, sipp, standalone_topology, test_dir};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");

fn lab_topology(dir: &Path) -> std::path::PathBuf {
    // SIPp 3.6 reads only the first challenge and knows only MD5.
    let options = Options {
        digest_algorithms: vec!["MD5", "SHA-256"],
        ..Options::default()
    };
    let path = dir.join("topology.toml");
    std::fs::write(
        &path,
        standalone_topology(free_port("127.0.0.1"), free_port("127.0.0.1"), &options),
    )
    .unwrap();
    path
}

fn sipp_args(extra: &[&str], target: &str) -> Vec<String> {
    let port = free_port("127.0.0.1").to_string();
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend([
        "-i".into(),
        "127.0.0.1".into(),
        "-p".into(),
        port,
        target.to_string(),
    ]);
    args
}

/// The three SIPp scenarios under sipp/ pass against a lab: REGISTER with digest auth,
/// MESSAGE between two registered users, PUBLISH then SUBSCRIBE/NOTIFY.
#[test]
fn sipp_scenarios_pass_against_a_lab() {
    if !sipp::require() {
        return;
    }
    let dir = test_dir(TMP, "lab_sipp");
    let topology = lab_topology(&dir);
    let lab = Lab::up(
        EXE.as_ref(),
        &topology,
        &dir.join("data"),
        &["--users", "20", "--password", "pw"],
    );
    let target = lab.servers[0]["sip_udp"]
        .as_str()
        .expect("sip_udp")
        .to_string();
    let user = |i: u32| format!("user{i:04}");
    let domain = testkit::DOMAIN;

    // REGISTER with digest, 10 users.
    let lines: Vec<String> = (1..=10)
        .map(|i| format!("{};pw;{domain}", user(i)))
        .collect();
    let inf = sipp::injection(&dir, "register.csv", &lines);
    let run = sipp::run(
        &dir,
        "register",
        "register.xml",
        &sipp_args(
            &["-inf", inf.to_str().unwrap(), "-m", "10", "-r", "20"],
            &target,
        ),
        60,
    );
    assert_eq!(
        run.status, 0,
        "register scenario failed:\n{}\n{}",
        run.errors, run.stdout
    );
    assert_eq!(run.log_lines().len(), 10);

    // MESSAGE: user0012 registers a contact at the receiving SIPp; user0011 sends 5 messages.
    let uas_port = free_port("127.0.0.1");
    let uas_args: Vec<String> = ["-m", "5", "-i", "127.0.0.1", "-p", &uas_port.to_string()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let uas_dir = dir.clone();
    let uas = std::thread::spawn(move || {
        sipp::run(&uas_dir, "message_uas", "message_uas.xml", &uas_args, 60)
    });
    let inf = sipp::injection(&dir, "contact.csv", &[format!("{};pw;{domain}", user(12))]);
    let port_s = uas_port.to_string();
    let run = sipp::run(
        &dir,
        "register_contact",
        "register_contact.xml",
        &sipp_args(
            &[
                "-inf",
                inf.to_str().unwrap(),
                "-m",
                "1",
                "-key",
                "contact_port",
                &port_s,
            ],
            &target,
        ),
        60,
    );
    assert_eq!(
        run.status, 0,
        "registering the receiver failed:\n{}",
        run.errors
    );
    let inf = sipp::injection(
        &dir,
        "message.csv",
        &[format!("{};pw;{domain};{}", user(11), user(12))],
    );
    let run = sipp::run(
        &dir,
        "message_uac",
        "message_uac.xml",
        &sipp_args(
            &["-inf", inf.to_str().unwrap(), "-m", "5", "-r", "10"],
            &target,
        ),
        60,
    );
    assert_eq!(run.status, 0, "message scenario failed:\n{}", run.errors);
    let uas = uas.join().unwrap();
    assert_eq!(
        uas.status, 0,
        "the receiver did not get 5 messages:\n{}",
        uas.errors
    );

    // PUBLISH then SUBSCRIBE/NOTIFY.
    let inf = sipp::injection(
        &dir,
        "presence.csv",
        &[format!("{};pw;{domain};{};pw", user(13), user(14))],
    );
    let run = sipp::run(
        &dir,
        "presence",
        "presence.xml",
        &sipp_args(&["-inf", inf.to_str().unwrap(), "-m", "1"], &target),
        60,
    );
    assert_eq!(run.status, 0, "presence scenario failed:\n{}", run.errors);
}

/// `lab up --json` prints one object per server with the documented keys; the lab's state
/// survives a restart; stopping the lab stops its servers, and so does killing it.
#[test]
fn lab_json_state_and_shutdown() {
    let dir = test_dir(TMP, "lab_lifecycle");
    let topology = lab_topology(&dir);
    let data = dir.join("data");
    let mut lab = Lab::up(
        EXE.as_ref(),
        &topology,
        &data,
        &["--users", "3", "--password", "pw"],
    );
    let s = &lab.servers[0];
    for key in ["server", "pid", "roles", "sip_udp", "sip_tcp", "admin"] {
        assert!(!s[key].is_null(), "missing {key} in {s}");
    }
    assert_eq!(s["server"], "fe1");
    let server_pid = s["pid"].as_u64().unwrap() as u32;
    let admin: std::net::SocketAddr = s["admin"].as_str().unwrap().parse().unwrap();
    // A request without the token is refused.
    let (status, _) = testkit::admin_call(&admin, None, "GET", "/api/v1/users", None);
    assert_eq!(status, 401);
    let token = lab.token();
    let (status, users) = testkit::admin_call(&admin, Some(&token), "GET", "/api/v1/users", None);
    assert_eq!(status, 200);
    assert_eq!(users.as_array().unwrap().len(), 3);
    let mut ua = testkit::Ua::udp(
        s["sip_udp"].as_str().unwrap().parse().unwrap(),
        "user0001",
        "pw",
        testkit::DOMAIN,
    );
    assert_eq!(ua.register(3600).status, 200);

    assert_eq!(lab.stop(), Some(0));
    assert!(!alive(server_pid), "the server stopped with the lab");

    // Started again on the same data: users and the registration are still there.
    let lab = Lab::up(EXE.as_ref(), &topology, &data, &[]);
    let token = lab.token();
    let (_, users) = testkit::admin_call(&admin, Some(&token), "GET", "/api/v1/users", None);
    assert_eq!(users.as_array().unwrap().len(), 3);
    let (_, regs) = testkit::admin_call(
        &admin,
        Some(&token),
        "GET",
        "/api/v1/registrations/user0001",
        None,
    );
    assert_eq!(regs.as_array().unwrap().len(), 1, "{regs}");

    // kill -9 of the lab: its servers notice and exit.
    let pid = lab.servers[0]["pid"].as_u64().unwrap() as u32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(lab.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while alive(pid) {
        assert!(
            std::time::Instant::now() < deadline,
            "server {pid} outlived its lab"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
