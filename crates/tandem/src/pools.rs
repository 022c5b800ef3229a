//! `tandem pool`: a front-end pool's fabric state, through the admin API of one of its
//! servers.

use crate::client::Admin;
use crate::{AdminTarget, PoolCommand, ServerAction};
use anyhow::anyhow;
use serde_json::Value;
use std::process::ExitCode;

/// `tandem server drain|resume SERVER`, on SERVER's own admin API.
pub fn server_action(action: ServerAction) -> anyhow::Result<ExitCode> {
    let (server, target, drain) = match action {
        ServerAction::Drain { server, target } => (server, target, true),
        ServerAction::Resume { server, target } => (server, target, false),
    };
    let mut target = target;
    if target.admin.is_none() {
        target.admin = Some(lab_admin_of(&server)?);
    }
    let admin = Admin::from_target(&target)?;
    let me = admin.ok("GET", "/api/v1/server", None)?;
    if me["server"].as_str() != Some(server.as_str()) {
        return Err(anyhow!(
            "{} is the admin address of {}, not {server}",
            target.admin.unwrap_or_default(),
            text(&me, "server")
        ));
    }
    if !drain {
        admin.ok("POST", "/api/v1/server/resume", Some(serde_json::json!({})))?;
        println!("{server} takes clients again and may become primary again");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!("draining {server}: moving its primaries away…");
    let report = admin.ok("POST", "/api/v1/server/drain", Some(serde_json::json!({})))?;
    if target.json {
        println!("{report}");
    } else {
        for m in report["moved"].as_array().into_iter().flatten() {
            println!("group {}: primary moved to {}", m[0], text_at(m, 1));
        }
        for f in report["failed"].as_array().into_iter().flatten() {
            println!("group {}: NOT moved: {}", f[0], text_at(f, 1));
        }
        for m in report["stores_moved"].as_array().into_iter().flatten() {
            println!(
                "store {}: primary moved to {}",
                text_at(m, 0),
                text_at(m, 1)
            );
        }
        for f in report["stores_failed"].as_array().into_iter().flatten() {
            println!("store {}: NOT moved: {}", text_at(f, 0), text_at(f, 1));
        }
        println!(
            "{server} drained in {} ms: it leads {} groups or stores and takes no new clients; \
             stop it when its clients have moved",
            text(&report, "took_ms"),
            text(&report, "still_primary")
        );
    }
    Ok(if report["still_primary"].as_u64() == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(2)
    })
}

fn text_at(v: &Value, i: usize) -> String {
    match &v[i] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// SERVER's admin address as the lab recorded it.
fn lab_admin_of(server: &str) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(crate::client::LAB_STATE).map_err(|e| {
        anyhow!(
            "no --admin given and no lab record ({}: {e}): pass {server}'s admin address with --admin",
            crate::client::LAB_STATE
        )
    })?;
    let v: Value = serde_json::from_str(&text)
        .map_err(|e| anyhow!("{} is not valid JSON: {e}", crate::client::LAB_STATE))?;
    v["servers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["server"].as_str() == Some(server))
        .and_then(|s| s["admin"].as_str())
        .map(str::to_string)
        .ok_or_else(|| {
            anyhow!(
                "{server} is not a server of the lab in {}: pass its admin address with --admin",
                crate::client::LAB_STATE
            )
        })
}

fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

fn yes_no(v: &Value, key: &str, yes: &str, no: &str) -> String {
    if v[key].as_bool() == Some(true) {
        yes.into()
    } else {
        no.into()
    }
}

pub fn run(target: &AdminTarget, command: PoolCommand) -> anyhow::Result<ExitCode> {
    let admin = Admin::from_target(target)?;
    match command {
        PoolCommand::Status { name } => {
            let st = admin.ok("GET", &format!("/api/v1/pools/{name}/status"), None)?;
            if target.json {
                println!("{st}");
            } else {
                print_status(&st);
            }
            // Scripts can tell a pool that serves everyone from one that does not.
            Ok(match st["state"].as_str() {
                Some("healthy" | "degraded") => ExitCode::SUCCESS,
                _ => ExitCode::from(2),
            })
        }
        PoolCommand::Start { name, wait } => {
            let r = admin.ok(
                "POST",
                &format!("/api/v1/pools/{name}/start"),
                Some(serde_json::json!({ "wait_s": wait })),
            )?;
            if target.json {
                println!("{r}");
            } else {
                println!("{}", text(&r, "message"));
            }
            Ok(if r["started"].as_bool() == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        PoolCommand::ResetGroup {
            name,
            group,
            accept_data_loss,
        } => {
            let r = admin.ok(
                "POST",
                &format!("/api/v1/pools/{name}/groups/{group}/reset"),
                Some(serde_json::json!({ "accept_data_loss": accept_data_loss })),
            )?;
            if target.json {
                println!("{r}");
            } else {
                let loss = &r["loss"];
                println!(
                    "group {} ({}): replicas answering {}, missing {}",
                    text(&r, "group"),
                    text(&r, "name"),
                    r["answering"],
                    r["missing"]
                );
                println!(
                    "{} {} holds everything up to position {}; it lacks {} committed \
                     transactions ({}) as far as it knows, and anything committed after its last \
                     contact with the primary",
                    if r["done"].as_bool() == Some(true) {
                        "reset: the group serves again from"
                    } else {
                        "would reset the group to"
                    },
                    text(&r, "chosen"),
                    text(loss, "last_applied"),
                    text(loss, "lost_transactions"),
                    text(loss, "lost_positions"),
                );
                if r["done"].as_bool() != Some(true) {
                    println!("nothing changed: run again with --accept-data-loss to reset it");
                }
                let next = text(&r, "next");
                if !next.is_empty() && next != "-" {
                    println!("{next}");
                }
            }
            Ok(if r["done"].as_bool() == Some(true) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
    }
}

fn print_status(st: &Value) {
    println!(
        "pool {} — {} — {} of {} servers up (the classic pool-level quorum would ask for {})",
        text(st, "pool"),
        text(st, "state").to_uppercase(),
        text(st, "servers_up"),
        st["servers"].as_array().map_or(0, Vec::len),
        text(st, "classic_quorum"),
    );
    println!("{}", text(st, "reason"));
    let affected = &st["affected_users"];
    if affected.is_object() {
        let first: Vec<&str> = affected["first"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|u| u.as_str())
            .take(10)
            .collect();
        println!(
            "users who cannot register, publish or subscribe now: {} ({}{})",
            text(affected, "count"),
            first.join(", "),
            if affected["count"].as_u64().unwrap_or(0) > first.len() as u64 {
                ", …"
            } else {
                ""
            }
        );
    }
    let servers: Vec<Vec<String>> = st["servers"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| {
                    vec![
                        text(s, "server"),
                        if s["lost"] == true {
                            "LOST (replicas moved)".to_string()
                        } else {
                            yes_no(s, "healthy", "up", "DOWN")
                        },
                        yes_no(s, "draining", "draining", "-"),
                        text(s, "primaries"),
                        text(s, "replicas"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{}",
        crate::render_table(
            &["server", "health", "drain", "primary of", "replicas"],
            &servers
        )
    );
    let groups: Vec<Vec<String>> = st["groups"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|g| {
                    let lag = g["replicas"]
                        .as_array()
                        .map(|r| {
                            r.iter()
                                .filter(|r| {
                                    Some(r["server"].as_str()) != Some(g["primary"].as_str())
                                })
                                .map(|r| {
                                    format!(
                                        "{} {}{}",
                                        text(r, "server"),
                                        if r["synchronized"].as_bool() == Some(true) {
                                            "sync".to_string()
                                        } else {
                                            format!(
                                                "{} tx/{} ms behind",
                                                text(r, "lag_entries"),
                                                text(r, "lag_ms")
                                            )
                                        },
                                        if r["healthy"].as_bool() == Some(true) {
                                            ""
                                        } else {
                                            " DOWN"
                                        }
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(", ")
                        })
                        .unwrap_or_default();
                    vec![
                        text(g, "id"),
                        text(g, "primary"),
                        lag,
                        yes_no(g, "serving", "serving", "NOT SERVING"),
                        format!(
                            "{}/{}",
                            text(g, "healthy_replicas"),
                            text(g, "placed_replicas")
                        ),
                        text(g, "term"),
                        g["reason"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    println!(
        "{}",
        crate::render_table(
            &[
                "group",
                "primary",
                "secondaries",
                "state",
                "replicas ok",
                "term",
                "why"
            ],
            &groups
        )
    );
}
