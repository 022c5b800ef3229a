//! A lab of a replicated store (availability group or mirroring) behind one front end, as the
//! process tests drive it: status through the front end's admin API, signals to a store
//! server by name, the CLI, and the count of acknowledged registrations that did not survive.

use crate::{Lab, RegisterRecord, admin_call, test_dir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running lab: `fe1` (front end) and the store servers of the topology.
pub struct ReplicatedLab {
    pub lab: Lab,
    pub dir: PathBuf,
    pub admin: SocketAddr,
    pub sip: SocketAddr,
    pub token: String,
    exe: PathBuf,
}

impl ReplicatedLab {
    /// Writes `topology` (from [`crate::ag_topology`] or [`crate::mirroring_topology`], whose
    /// `fe1` has admin port `fe_admin`) under a fresh test directory and starts the lab with
    /// `users` users whose password is "pw".
    pub fn start(
        exe: &Path,
        tmp: &str,
        name: &str,
        (topology, fe_admin): (String, u16),
        users: usize,
    ) -> ReplicatedLab {
        let dir = test_dir(tmp, name);
        let path = dir.join("topology.toml");
        std::fs::write(&path, topology).expect("write the topology");
        let lab = Lab::up(
            exe,
            &path,
            &dir.join("data"),
            &["--users", &users.to_string(), "--password", "pw"],
        );
        let fe = lab
            .servers
            .iter()
            .find(|s| s["server"] == "fe1")
            .expect("fe1 in the lab");
        let sip = fe["sip_udp"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .expect("fe1's SIP address");
        let admin: SocketAddr = format!("127.0.0.1:{fe_admin}")
            .parse()
            .expect("fe1's admin address");
        let token = lab.token();
        ReplicatedLab {
            lab,
            dir,
            admin,
            sip,
            token,
            exe: exe.to_path_buf(),
        }
    }

    /// `store status` of store `store`, as JSON.
    pub fn status(&self) -> serde_json::Value {
        let (code, body) = admin_call(
            &self.admin,
            Some(&self.token),
            "GET",
            "/api/v1/stores/store/status",
            None,
        );
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits (up to 60 s) until the status names a primary satisfying `pred`.
    pub fn wait_primary(&self, what: &str, pred: impl Fn(&str) -> bool) -> serde_json::Value {
        self.wait_status(what, |s| s["primary"].as_str().is_some_and(&pred))
    }

    /// Waits (up to 60 s) until the status satisfies `pred`.
    pub fn wait_status(
        &self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, body) = admin_call(
                &self.admin,
                Some(&self.token),
                "GET",
                "/api/v1/stores/store/status",
                None,
            );
            if code == 200 {
                // Whatever else is going on, a witness is never named the primary.
                let primary = body["primary"].as_str();
                let witness = body["replicas"].as_array().is_some_and(|rs| {
                    rs.iter()
                        .any(|r| r["role"] == "witness" && r["server"].as_str() == primary)
                });
                assert!(!witness, "a witness named the primary: {body}");
                if pred(&body) {
                    return body;
                }
            }
            assert!(Instant::now() < end, "no {what} within 60 s: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of a server of the lab.
    pub fn pid(&self, server: &str) -> i32 {
        self.lab
            .servers
            .iter()
            .find(|s| s["server"] == server)
            .and_then(|s| s["pid"].as_i64())
            .unwrap_or_else(|| panic!("no pid for {server}")) as i32
    }

    pub fn signal(&self, server: &str, sig: Signal) {
        kill(Pid::from_raw(self.pid(server)), sig).expect("signal a server");
    }

    /// Runs the CLI against `fe1`'s admin API.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        let admin = self.admin.to_string();
        let token = self.dir.join("data").join("admin.token");
        Command::new(&self.exe)
            .args(args)
            .args([
                "--admin",
                &admin,
                "--token-file",
                token.to_str().expect("a UTF-8 path"),
            ])
            .output()
            .expect("run the CLI")
    }

    /// The contacts bound to a user, as the primary answers.
    pub fn contacts(&self, user: &str) -> Vec<String> {
        let (code, body) = admin_call(
            &self.admin,
            Some(&self.token),
            "GET",
            &format!("/api/v1/registrations/{user}"),
            None,
        );
        assert_eq!(code, 200, "{body}");
        crate::contacts_of(&body)
    }

    /// Acknowledged registrations that are not bound now.
    pub fn lost(&self, records: &[RegisterRecord]) -> Vec<String> {
        records
            .iter()
            .filter(|r| r.status == 200)
            .filter(|r| {
                !self
                    .contacts(&r.user)
                    .iter()
                    .any(|c| contact_matches(c, &r.contact))
            })
            .map(|r| r.user.clone())
            .collect()
    }
}

fn contact_matches(bound: &str, registered: &str) -> bool {
    bound.split(';').next() == registered.split(';').next()
}

/// Of a load's records: acknowledged, failed, the slowest, and the first success sent at or
/// after `since` (measured from `since`).
pub fn summary(
    records: &[RegisterRecord],
    since: Instant,
) -> (usize, usize, Duration, Option<Duration>) {
    let acked = records.iter().filter(|r| r.status == 200).count();
    let failed = records.len() - acked;
    let worst = records
        .iter()
        .map(|r| r.done - r.sent)
        .max()
        .unwrap_or_default();
    let first_after = records
        .iter()
        .filter(|r| r.status == 200 && r.sent >= since)
        .map(|r| r.done - since)
        .min();
    (acked, failed, worst, first_after)
}

/// What [`kill_under_load`] saw: every request's record, and (from the kill) the
/// acknowledged and failed counts, the slowest request and the first success.
pub struct KillRun {
    pub records: Vec<RegisterRecord>,
    pub acked: usize,
    pub failed: usize,
    pub slowest: Duration,
    pub first_success_after_kill: Option<Duration>,
}

/// Under registration load from 4 clients over `users` users, `kill -9` of `victim` once 150
/// registrations are done; returns once 300 more are done (the load must resume by itself).
pub fn kill_under_load(lab: &ReplicatedLab, victim: &str, users: usize) -> KillRun {
    let load = crate::RegisterLoad::start(lab.sip, 4, users, "pw");
    assert!(
        load.wait_for(150, Duration::from_secs(60)),
        "the load did not start"
    );
    let killed_at = Instant::now();
    lab.signal(victim, Signal::SIGKILL);
    let done_before = load.records.lock().map(|r| r.len()).unwrap_or(0);
    assert!(
        load.wait_for(done_before + 300, Duration::from_secs(90)),
        "registrations did not resume after the kill of {victim}"
    );
    let records = load.stop();
    let (acked, failed, slowest, first_success_after_kill) = summary(&records, killed_at);
    eprintln!(
        "kill -9 of {victim}: {acked} acknowledged, {failed} failed, slowest request {slowest:?}, first success after the kill {first_success_after_kill:?}"
    );
    KillRun {
        records,
        acked,
        failed,
        slowest,
        first_success_after_kill,
    }
}
