//! The admin commands: HTTP requests to a server's admin API, printed as tables or JSON.

use crate::{AdminTarget, UserCommand};
use anyhow::{Context, anyhow, bail};
use std::io::BufRead;
use std::process::ExitCode;

/// Where the lab records its servers, for the CLI's default admin address.
pub const LAB_STATE: &str = "tandem-lab/lab.json";

/// A blocking admin API client.
pub struct Admin {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Admin {
    /// A client for `addr` (host:port) with a token.
    pub fn new(addr: &str, token: &str) -> Admin {
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(std::time::Duration::from_secs(30)))
            .build();
        Admin {
            base: format!("http://{addr}"),
            token: token.to_string(),
            agent: config.into(),
        }
    }

    /// The client the CLI flags and environment describe.
    pub fn from_target(target: &AdminTarget) -> anyhow::Result<Admin> {
        let addr = match &target.admin {
            Some(a) => a.clone(),
            None => default_admin()?,
        };
        let token = std::fs::read_to_string(&target.token_file)
            .with_context(|| {
                format!(
                    "cannot read the admin token {} (pass --token-file or set TANDEM_TOKEN_FILE)",
                    target.token_file.display()
                )
            })?
            .trim()
            .to_string();
        Ok(Admin::new(&addr, &token))
    }

    /// Sends a request; returns the status and the JSON body.
    pub fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.token);
        let result = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(b),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(b),
            _ => bail!("unsupported request {method} {path}"),
        };
        let mut resp =
            result.map_err(|e| anyhow!("cannot reach the admin API at {}: {e}", self.base))?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let json = if text.trim().is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
        };
        Ok((status, json))
    }

    /// Like `call`, but a non-2xx status is an error carrying the API's message.
    pub fn ok(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, json) = self.call(method, path, body)?;
        if !(200..300).contains(&status) {
            let msg = json
                .get("error")
                .and_then(|e| e.as_str())
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            bail!("{msg} (HTTP {status})");
        }
        Ok(json)
    }
}

/// The lab's first server's admin address, or the default topology's.
fn default_admin() -> anyhow::Result<String> {
    if let Ok(text) = std::fs::read_to_string(LAB_STATE)
        && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(a) = v
            .get("servers")
            .and_then(|s| s.get(0))
            .and_then(|s| s.get("admin"))
            .and_then(|a| a.as_str())
    {
        return Ok(a.to_string());
    }
    let t = topology::parse(crate::lab::DEFAULT_TOPOLOGY, "examples/standard.toml")
        .map_err(|d| anyhow!("the built-in topology is invalid: {d}"))?;
    t.servers
        .first()
        .map(|s| s.admin.to_string())
        .ok_or_else(|| anyhow!("no server to talk to: pass --admin"))
}

fn encode(aor: &str) -> String {
    let mut out = String::new();
    for b in aor.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~@".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn read_password(given: Option<String>) -> anyhow::Result<String> {
    if let Some(p) = given {
        return Ok(p);
    }
    eprint!("password: ");
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("cannot read the password")?;
    let p = line.trim_end_matches(['\r', '\n']).to_string();
    if p.is_empty() {
        bail!("no password given");
    }
    Ok(p)
}

/// `tandem user …`.
pub fn user(target: &AdminTarget, command: UserCommand) -> anyhow::Result<ExitCode> {
    let admin = Admin::from_target(target)?;
    match command {
        UserCommand::Add { aor, password } => {
            let password = read_password(password)?;
            let v = admin.ok(
                "POST",
                "/api/v1/users",
                Some(serde_json::json!({"aor": aor, "password": password})),
            )?;
            if target.json {
                println!("{v}");
            } else {
                println!(
                    "added {}",
                    v.get("aor").and_then(|a| a.as_str()).unwrap_or(&aor)
                );
            }
        }
        UserCommand::List => {
            let v = admin.ok("GET", "/api/v1/users", None)?;
            if target.json {
                println!("{v}");
            } else {
                let rows = v
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|u| {
                                vec![
                                    u.get("aor")
                                        .and_then(|x| x.as_str())
                                        .unwrap_or("")
                                        .to_string(),
                                    u.get("bindings").map(|x| x.to_string()).unwrap_or_default(),
                                ]
                            })
                            .collect::<Vec<_>>()
                    })
                    .unwrap_or_default();
                let n = rows.len();
                println!(
                    "{}",
                    crate::render_table(&["user", "registered contacts"], &rows)
                );
                println!("{n} user(s)");
            }
        }
        UserCommand::Remove { aor } => {
            admin.ok("DELETE", &format!("/api/v1/users/{}", encode(&aor)), None)?;
            if target.json {
                println!("{}", serde_json::json!({"removed": aor}));
            } else {
                println!("removed {aor}");
            }
        }
        UserCommand::SetPassword { aor, password } => {
            let password = read_password(password)?;
            admin.ok(
                "PUT",
                &format!("/api/v1/users/{}/password", encode(&aor)),
                Some(serde_json::json!({"password": password})),
            )?;
            if target.json {
                println!("{}", serde_json::json!({"password_changed": aor}));
            } else {
                println!("password changed for {aor}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `tandem registrations AOR`.
pub fn registrations(target: &AdminTarget, aor: &str) -> anyhow::Result<ExitCode> {
    let admin = Admin::from_target(target)?;
    let v = admin.ok(
        "GET",
        &format!("/api/v1/registrations/{}", encode(aor)),
        None,
    )?;
    if target.json {
        println!("{v}");
        return Ok(ExitCode::SUCCESS);
    }
    let s = |b: &serde_json::Value, k: &str| match b.get(k) {
        Some(serde_json::Value::String(x)) => x.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    let rows: Vec<Vec<String>> = v
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    vec![
                        s(b, "contact"),
                        s(b, "expires_in_s"),
                        s(b, "transport"),
                        s(b, "source"),
                        s(b, "user_agent"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    if rows.is_empty() {
        println!("{aor} has no registered contact");
    } else {
        println!(
            "{}",
            crate::render_table(
                &[
                    "contact",
                    "expires in (s)",
                    "transport",
                    "source",
                    "user agent"
                ],
                &rows
            )
        );
    }
    Ok(ExitCode::SUCCESS)
}
