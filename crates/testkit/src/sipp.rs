//! Running SIPp (Debian's `sip-tester`) scenarios from `sipp/`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The scenario file `sipp/<name>`.
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../sipp")
        .join(name)
}

/// True when sipp can run here. Under `CI=true` a missing sipp is a failure, not a skip:
/// `.ci/run` installs it.
pub fn require() -> bool {
    let ok = Command::new("sipp").arg("-v").output().is_ok();
    if !ok {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("sipp is not installed (Debian package sip-tester); CI must run it");
        }
        eprintln!("SKIPPED: sipp is not installed (apt-get install sip-tester)");
    }
    ok
}

/// What a SIPp run left behind.
#[derive(Debug)]
pub struct Run {
    /// sipp's exit status: 0 when every call succeeded.
    pub status: i32,
    /// The `<log>` actions' output (`-trace_logs`).
    pub log: String,
    /// The error trace (`-trace_err`).
    pub errors: String,
    pub stdout: String,
}

impl Run {
    /// The lines of the action log.
    pub fn log_lines(&self) -> Vec<&str> {
        self.log.lines().filter(|l| !l.trim().is_empty()).collect()
    }
}

/// Runs `sipp -sf <scenario> <args…>` in `dir` (a fresh name per run), in the foreground, with
/// a hard time limit.
pub fn run(dir: &Path, name: &str, scenario_file: &str, args: &[String], limit_s: u32) -> Run {
    let log = dir.join(format!("{name}.log"));
    let err = dir.join(format!("{name}.errors"));
    let out = Command::new("timeout")
        .arg(limit_s.to_string())
        .arg("sipp")
        .arg("-sf")
        .arg(scenario(scenario_file))
        .args(args)
        .arg("-trace_logs")
        .arg("-log_file")
        .arg(&log)
        .arg("-trace_err")
        .arg("-error_file")
        .arg(&err)
        .arg("-nostdin")
        .current_dir(dir)
        .output()
        .expect("run sipp");
    Run {
        status: out.status.code().unwrap_or(-1),
        log: std::fs::read_to_string(&log).unwrap_or_default(),
        errors: std::fs::read_to_string(&err).unwrap_or_default(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// Writes a SIPp injection file (`SEQUENTIAL`, one `;`-separated line per call).
pub fn injection(dir: &Path, name: &str, lines: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("SEQUENTIAL\n");
    for l in lines {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write injection file");
    path
}
