//! `tandem store …`: replicated stores through a server's admin API.

use crate::client::Admin;
use crate::{AdminTarget, LogshipCommand, StoreCommand};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::io::BufRead;
use std::process::ExitCode;

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn when(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let secs = ms / 1000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02}.{:03} UTC", ms % 1000)
}

/// Prints a store status as tables.
pub fn print_status(st: &Value) {
    if st["mode"] == "failover-cluster" {
        println!(
            "store {} (failover-cluster) — owner {} — fencing token {} — lease age {} ms — listener {}",
            text(st, "store"),
            text(st, "primary"),
            text(st, "term"),
            text(st, "lease_age_ms"),
            text(st, "listener"),
        );
    } else {
        println!(
            "store {} ({}) — primary {} — term {} — lease age {} ms — last position {} (committed {}) — listener {}",
            text(st, "store"),
            text(st, "mode"),
            text(st, "primary"),
            text(st, "term"),
            text(st, "lease_age_ms"),
            text(st, "last_log_index"),
            text(st, "committed"),
            text(st, "listener"),
        );
    }
    let m = &st["mirroring"];
    if m.is_object() {
        println!(
            "mirroring {}: {}{} — mirror {}, witness {}",
            text(m, "safety"),
            text(m, "state"),
            if m["exposed"].as_bool() == Some(true) {
                ", principal EXPOSED (commits are not on the mirror)"
            } else {
                ""
            },
            text(m, "mirror"),
            text(m, "witness"),
        );
    }
    let rows: Vec<Vec<String>> = st["replicas"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    vec![
                        text(r, "server"),
                        text(r, "role"),
                        text(r, "commit"),
                        text(r, "failover"),
                        if r["readable"].as_bool() == Some(true) {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        if r["synchronized"].as_bool() == Some(true) {
                            "synchronized".into()
                        } else {
                            "synchronizing".into()
                        },
                        text(r, "lag_entries"),
                        text(r, "lag_ms"),
                        if r["healthy"].as_bool() == Some(true) {
                            "healthy".into()
                        } else {
                            "NOT healthy".into()
                        },
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{}",
        crate::render_table(
            &[
                "replica", "role", "commit", "failover", "readable", "state", "lag (tx)",
                "lag (ms)", "health"
            ],
            &rows
        )
    );
    let failovers: Vec<Vec<String>> = st["failovers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|f| {
                    let first = f["first_write_ms"].as_u64().unwrap_or(0);
                    let detected = f["detected_ms"].as_u64().unwrap_or(0);
                    vec![
                        when(f["decided_ms"].as_u64().unwrap_or(0)),
                        text(f, "kind").to_lowercase(),
                        format!("{} → {}", text(f, "from_server"), text(f, "to_server")),
                        text(f, "term"),
                        text(f, "lost_transactions"),
                        if first > 0 {
                            first.saturating_sub(detected).to_string()
                        } else {
                            "pending".into()
                        },
                        text(f, "reason"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if failovers.is_empty() {
        println!("no failover recorded");
    } else {
        println!(
            "{}",
            crate::render_table(
                &[
                    "when",
                    "kind",
                    "primary",
                    "term",
                    "RPO (tx lost)",
                    "RTO (ms)",
                    "reason"
                ],
                &failovers
            )
        );
    }
}

/// A time given on the command line: unix ms, or RFC 3339.
fn parse_time(t: &str) -> anyhow::Result<u64> {
    if let Ok(ms) = t.parse::<u64>() {
        return Ok(ms);
    }
    let at = humantime::parse_rfc3339_weak(t)
        .with_context(|| format!("`{t}` is neither unix ms nor an RFC 3339 time"))?;
    Ok(at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0))
}

/// `tandem store list-backups|verify-backup|restore`: on the share, here.
fn backups(json_out: bool, command: &StoreCommand) -> anyhow::Result<ExitCode> {
    use store::backup;
    let listed = |name: &str, share: &std::path::Path| -> anyhow::Result<Vec<backup::Manifest>> {
        let mut good = Vec::new();
        for f in backup::list(share, name)? {
            match f.manifest {
                Ok(m) => good.push(m),
                Err(why) => eprintln!("warning: {}: {why}", f.path.display()),
            }
        }
        Ok(good)
    };
    match command {
        StoreCommand::ListBackups { name, from } => {
            let found = listed(name, from)?;
            let mut segments = Vec::new();
            for f in backup::list_segments(from, name)? {
                match f.manifest {
                    Ok(m) => segments.push(m),
                    Err(why) => eprintln!("warning: {}: {why}", f.path.display()),
                }
            }
            if json_out {
                println!("{}", json!({"full": found, "log": segments}));
                return Ok(ExitCode::SUCCESS);
            }
            if found.is_empty() {
                println!("no full backup of {name} in {}", from.display());
            } else {
                let rows: Vec<Vec<String>> = found
                    .iter()
                    .map(|m| {
                        vec![
                            m.lsn.to_string(),
                            when(m.taken_ms),
                            m.server.clone(),
                            m.bytes.to_string(),
                            m.file.clone(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    crate::render_table(&["full at LSN", "taken", "by", "bytes", "file"], &rows)
                );
            }
            if !segments.is_empty() {
                let rows: Vec<Vec<String>> = segments
                    .iter()
                    .map(|m| {
                        vec![
                            format!("{}..{}", m.first, m.last),
                            format!("{} .. {}", when(m.first_ms), when(m.last_ms)),
                            m.server.clone(),
                            m.file.clone(),
                        ]
                    })
                    .collect();
                println!(
                    "{}",
                    crate::render_table(&["log LSN", "applied", "by", "file"], &rows)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::VerifyBackup { name, from, lsn } => {
            let found: Vec<backup::Manifest> = listed(name, from)?
                .into_iter()
                .filter(|m| lsn.is_none_or(|l| m.lsn == l))
                .collect();
            if found.is_empty() {
                bail!("no backup of {name} to verify in {}", from.display());
            }
            let mut bad = 0;
            let mut report = Vec::new();
            for m in &found {
                let result = backup::verify(from, m);
                if !json_out {
                    match &result {
                        Ok(()) => println!("ok   LSN {} {}", m.lsn, m.file),
                        Err(why) => println!("BAD  LSN {} {why}", m.lsn),
                    }
                }
                bad += usize::from(result.is_err());
                report.push(json!({"lsn": m.lsn, "file": m.file, "ok": result.is_ok(), "error": result.err()}));
            }
            for f in backup::list_segments(from, name)? {
                let (label, result) = match &f.manifest {
                    Ok(m) => (
                        format!("log LSN {}..{}", m.first, m.last),
                        backup::verify_segment(from, m).map(|()| m.file.clone()),
                    ),
                    Err(why) => (
                        "log".to_string(),
                        Err(format!("{}: {why}", f.path.display())),
                    ),
                };
                if lsn.is_some() {
                    continue;
                }
                if !json_out {
                    match &result {
                        Ok(file) => println!("ok   {label} {file}"),
                        Err(why) => println!("BAD  {label} {why}"),
                    }
                }
                bad += usize::from(result.is_err());
                report.push(json!({"log": label, "ok": result.is_ok(), "error": result.err()}));
            }
            if json_out {
                println!("{}", Value::Array(report));
            }
            if bad > 0 {
                eprintln!("{bad} backup file(s) failed verification");
                return Ok(ExitCode::FAILURE);
            }
            Ok(ExitCode::SUCCESS)
        }
        StoreCommand::Restore {
            name,
            from,
            to_lsn,
            to_time,
            into,
        } => {
            let target = match (to_lsn, to_time) {
                (Some(n), _) => backup::Target::Lsn(*n),
                (None, Some(t)) => backup::Target::Time(parse_time(t)?),
                (None, None) => backup::Target::Latest,
            };
            let r = backup::restore(from, name, target, into)?;
            if json_out {
                println!("{}", serde_json::to_string(&r)?);
            } else {
                println!(
                    "restored {name} at LSN {}{} into {} (full backup {}, then {} log segment(s))",
                    r.lsn,
                    r.last_ms
                        .map(|ms| format!(", last command applied {}", when(ms)))
                        .unwrap_or_default(),
                    into.display(),
                    r.full,
                    r.segments
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        _ => bail!("not a backup command"),
    }
}

/// `tandem store …`.
pub fn run(target: &AdminTarget, command: StoreCommand) -> anyhow::Result<ExitCode> {
    if matches!(
        command,
        StoreCommand::ListBackups { .. }
            | StoreCommand::VerifyBackup { .. }
            | StoreCommand::Restore { .. }
    ) {
        return backups(target.json, &command);
    }
    let admin = Admin::from_target(target)?;
    let show = |v: &Value| {
        if target.json {
            println!("{v}");
        } else {
            print_status(v);
        }
    };
    match &command {
        StoreCommand::Status { name } => {
            show(&admin.ok("GET", &format!("/api/v1/stores/{name}/status"), None)?)
        }
        StoreCommand::Failover { name, to } => {
            let v = admin.ok(
                "POST",
                &format!("/api/v1/stores/{name}/failover"),
                Some(json!({"to": to})),
            )?;
            if !target.json {
                println!(
                    "planned failover done: {} is the primary",
                    text(&v, "primary")
                );
            }
            show(&v);
        }
        StoreCommand::ForceService { name, to, yes } => {
            let path = format!("/api/v1/stores/{name}/force-service");
            let report = admin.ok("POST", &path, Some(json!({"to": to, "confirm": false})))?;
            let lost = report["lost_transactions"].as_u64().unwrap_or(0);
            let contact = report["last_primary_contact_ms"].as_u64();
            println!(
                "Forcing service on {to} loses {lost} committed transaction(s) it never received{}",
                if lost > 0 {
                    format!(" (positions {})", text(&report, "lost_positions"))
                } else {
                    String::new()
                }
            );
            println!(
                "  {to} holds everything up to position {}; the primary had reported position {} committed{}.",
                text(&report, "last_applied"),
                text(&report, "primary_committed_seen"),
                match contact {
                    Some(ms) => format!(
                        "; anything it committed after its last message ({}) is lost too",
                        when(ms)
                    ),
                    None => String::new(),
                }
            );
            if !yes {
                eprint!("Type the store name ({name}) to force service on {to}: ");
                let mut line = String::new();
                std::io::stdin()
                    .lock()
                    .read_line(&mut line)
                    .context("cannot read the confirmation")?;
                if line.trim() != name {
                    bail!("not confirmed: nothing changed");
                }
            }
            let done = admin.ok("POST", &path, Some(json!({"to": to, "confirm": true})))?;
            if target.json {
                println!("{done}");
            } else {
                println!(
                    "{to} now serves store {name} as its only replica (generation {}); {} transaction(s) lost. \
                     Reseed the other replicas with `tandem store add-replica`.",
                    text(&done, "generation"),
                    text(&done, "lost_transactions")
                );
            }
        }
        StoreCommand::AddReplica {
            name,
            server,
            addr,
            commit,
        } => {
            let v = admin.ok(
                "POST",
                &format!("/api/v1/stores/{name}/add-replica"),
                Some(json!({"server": server, "addr": addr, "commit": commit})),
            )?;
            show(&v);
        }
        StoreCommand::RemoveReplica { name, server } => {
            let v = admin.ok(
                "POST",
                &format!("/api/v1/stores/{name}/remove-replica"),
                Some(json!({"server": server, "addr": null, "commit": null})),
            )?;
            show(&v);
        }
        StoreCommand::SetSafety { name, safety } => {
            let v = admin.ok(
                "POST",
                &format!("/api/v1/stores/{name}/mirroring"),
                Some(json!({"safety": safety, "witness": null})),
            )?;
            show(&v);
        }
        StoreCommand::AddWitness { name } | StoreCommand::RemoveWitness { name } => {
            let add = matches!(command, StoreCommand::AddWitness { .. });
            let v = admin.ok(
                "POST",
                &format!("/api/v1/stores/{name}/mirroring"),
                Some(json!({"safety": null, "witness": add})),
            )?;
            show(&v);
        }
        StoreCommand::Backup { name, to, log } => {
            let b = admin.ok(
                "POST",
                &format!("/api/v1/stores/{name}/backup"),
                Some(json!({"to": to, "log": log})),
            )?;
            if target.json {
                println!("{b}");
            } else {
                let m = &b["full"];
                if m.is_object() {
                    println!(
                        "full backup of {name} at LSN {} taken by {}: {} ({} bytes, SHA-256 {})",
                        text(m, "lsn"),
                        text(m, "server"),
                        text(m, "file"),
                        text(m, "bytes"),
                        text(m, "sha256")
                    );
                }
                let seg = &b["segment"];
                if seg.is_object() {
                    println!(
                        "log backup of {name}: LSN {}..{} taken by {}: {}",
                        text(seg, "first"),
                        text(seg, "last"),
                        text(seg, "server"),
                        text(seg, "file")
                    );
                } else if *log {
                    println!("log backup of {name}: nothing logged since the last one");
                }
            }
        }
        StoreCommand::ListBackups { .. }
        | StoreCommand::VerifyBackup { .. }
        | StoreCommand::Restore { .. } => return backups(target.json, &command),
        StoreCommand::SetCommit {
            name,
            server,
            commit,
        } => {
            let v = admin.ok(
                "POST",
                &format!("/api/v1/stores/{name}/set-commit"),
                Some(json!({"server": server, "addr": null, "commit": commit})),
            )?;
            show(&v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem logship …`.
pub fn logship(target: &AdminTarget, command: LogshipCommand) -> anyhow::Result<ExitCode> {
    let admin = Admin::from_target(target)?;
    match command {
        LogshipCommand::Users { link } => {
            let r = admin.ok("GET", &format!("/api/v1/logship/{link}/users"), None)?;
            if target.json {
                println!("{r}");
            } else {
                println!(
                    "Read from the standby {}: it holds everything its primary applied up to {} ({:.1} s ago).",
                    text(&r, "store"),
                    when(r["complete_until_ms"].as_u64().unwrap_or(0)),
                    r["staleness_s"].as_f64().unwrap_or(0.0)
                );
                let rows: Vec<Vec<String>> = r["users"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                    .iter()
                    .map(|u| vec![text(u, "aor"), text(u, "bindings")])
                    .collect();
                println!(
                    "{}",
                    crate::render_table(&["user", "registered contacts"], &rows)
                );
            }
        }
        LogshipCommand::Reverse { link } => {
            let r = admin.ok(
                "POST",
                &format!("/api/v1/logship/{link}/reverse"),
                Some(json!({})),
            )?;
            if target.json {
                println!("{r}");
            } else {
                if let Some(dir) = r["archived"].as_str() {
                    println!(
                        "The share's earlier backups of {} were set aside in {dir}.",
                        text(&r, "primary")
                    );
                }
                println!(
                    "{} now ships its log to {}: a new chain starts with a full backup at LSN {}.",
                    text(&r, "primary"),
                    text(&r, "secondary"),
                    text(&r, "full_lsn")
                );
                println!(
                    "Start (or restart) the servers of {}: they set its old database aside and reseed it from that chain.",
                    text(&r, "secondary")
                );
            }
        }
        LogshipCommand::Failover {
            link,
            tail_from,
            planned,
        } => {
            if planned {
                eprintln!("asking the primary to close its writes and ship its last log backup…");
            }
            let r = admin.ok(
                "POST",
                &format!("/api/v1/logship/{link}/failover"),
                Some(json!({"tail_from": tail_from, "planned": planned})),
            )?;
            if target.json {
                println!("{r}");
            } else {
                println!("{}", text(&r, "tail"));
                println!(
                    "{} is online as a writable store: it holds everything up to LSN {} (last command applied on {} at {}).",
                    text(&r, "secondary"),
                    text(&r, "last_lsn"),
                    text(&r, "primary"),
                    when(r["last_commit_ms"].as_u64().unwrap_or(0))
                );
                if let Some(why) = r["stopped"].as_str() {
                    println!("The restore stopped early: {why}");
                }
                println!(
                    "{} takes no writes until it is reseeded: run `tandem logship reverse {}` here once its site is back.",
                    text(&r, "primary"),
                    text(&r, "link")
                );
            }
        }
        LogshipCommand::Status => {
            let v = admin.ok("GET", "/api/v1/logship", None)?;
            if target.json {
                println!("{v}");
                return Ok(ExitCode::SUCCESS);
            }
            let links = v.as_array().cloned().unwrap_or_default();
            if links.is_empty() {
                println!("this server holds neither end of a log-shipping link");
            }
            let rows: Vec<Vec<String>> = links
                .iter()
                .map(|l| {
                    vec![
                        text(l, "link"),
                        match l["primary_lsn"].as_u64() {
                            Some(lsn) => format!("primary (LSN {lsn})"),
                            None => text(l, "side"),
                        },
                        format!(
                            "{} → {} ({})",
                            text(l, "primary"),
                            text(l, "secondary"),
                            text(l, "state")
                        ),
                        format!(
                            "{} at {}",
                            text(l, "last_backup_lsn"),
                            when(l["last_backup_ms"].as_u64().unwrap_or(0))
                        ),
                        match l["last_copied_lsn"].as_u64() {
                            Some(lsn) => format!(
                                "{lsn} at {}",
                                when(l["last_copy_ms"].as_u64().unwrap_or(0))
                            ),
                            None => "-".into(),
                        },
                        match l["last_restored_lsn"].as_u64() {
                            Some(lsn) => format!(
                                "{lsn} at {}",
                                when(l["last_restore_ms"].as_u64().unwrap_or(0))
                            ),
                            None => "-".into(),
                        },
                        format!(
                            "{:.1} s, {} tx",
                            l["lag_s"].as_f64().unwrap_or(0.0),
                            text(l, "lag_tx")
                        ),
                        if l["alert"].as_bool() == Some(true) {
                            format!(
                                "ALERT: {}",
                                l["alerts"]
                                    .as_array()
                                    .map(|a| a
                                        .iter()
                                        .filter_map(Value::as_str)
                                        .collect::<Vec<_>>()
                                        .join("; "))
                                    .unwrap_or_default()
                            )
                        } else {
                            "ok".into()
                        },
                    ]
                })
                .collect();
            if !rows.is_empty() {
                println!(
                    "{}",
                    crate::render_table(
                        &[
                            "link",
                            "side",
                            "stores",
                            "last backup (LSN)",
                            "last copy",
                            "last restore",
                            "lag",
                            "alert"
                        ],
                        &rows
                    )
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
