//! `tandem lab up`: every server of a topology as its own OS process on this machine.
//!
//! Each server keeps its state under `<data>/<server>/`, so a lab stopped (or killed) and
//! started again keeps its users and registrations. Servers exit when the lab's end of their
//! stdin closes, so they never outlive it, even after a `kill -9` of the lab.

use crate::client::Admin;
use crate::server::Ready;
use anyhow::{Context, anyhow, bail};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The default topology, built in so `lab up` works from any directory.
pub const DEFAULT_TOPOLOGY: &str = include_str!("../../../examples/standard.toml");

/// How long servers get to print their ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Topology file (default: the built-in standard topology, examples/standard.toml).
    #[arg(long)]
    topology: Option<PathBuf>,
    /// Directory holding every server's state, the admin token and the lab's record.
    #[arg(long, default_value = "tandem-lab")]
    data: PathBuf,
    /// Provision this many test users, user0001@<domain> and up.
    #[arg(long, default_value_t = 0)]
    users: u32,
    /// Password of the test users.
    #[arg(long)]
    password: Option<String>,
    /// Print one JSON object per server once all answer, for scripts.
    #[arg(long)]
    json: bool,
}

struct Server {
    name: String,
    child: Child,
    ready: Option<Ready>,
    exited: bool,
}

pub fn up(args: Args) -> anyhow::Result<ExitCode> {
    if args.users > 0 && args.password.is_none() {
        bail!("--users needs --password: the test users' password");
    }
    std::fs::create_dir_all(&args.data)
        .with_context(|| format!("cannot create {}", args.data.display()))?;
    let data = args
        .data
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", args.data.display()))?;
    let topology_path = match &args.topology {
        Some(p) => p
            .canonicalize()
            .with_context(|| format!("cannot find the topology {}", p.display()))?,
        None => {
            let p = data.join("topology.toml");
            std::fs::write(&p, DEFAULT_TOPOLOGY)
                .with_context(|| format!("cannot write {}", p.display()))?;
            p
        }
    };
    let topology =
        topology::load(&topology_path).map_err(|d| anyhow!("the topology is not valid:\n{d}"))?;
    let token_file = data.join("admin.token");
    let token = crate::ensure_token(&token_file)?;
    // The servers' rpc secret, shared by all of them.
    let secret_file = data.join("cluster.secret");
    if !secret_file.exists() {
        rpc::ClusterSecret::generate(&secret_file)
            .with_context(|| format!("cannot create {}", secret_file.display()))?;
    }
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;

    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Ready)>();
    let mut servers = Vec::new();
    for (i, s) in topology.servers.iter().enumerate() {
        let dir = data.join(&s.name);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let log_path = dir.join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let mut child = Command::new(&exe)
            .arg("server")
            .arg("--topology")
            .arg(&topology_path)
            .arg("--name")
            .arg(&s.name)
            .arg("--data")
            .arg(&dir)
            .arg("--admin-token-file")
            .arg(&token_file)
            .arg("--cluster-secret-file")
            .arg(&secret_file)
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log.try_clone()?)
            .spawn()
            .with_context(|| format!("cannot start server {}", s.name))?;
        if let Some(out) = child.stdout.take() {
            let tx = ready_tx.clone();
            let mut log = log;
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    match serde_json::from_str::<Ready>(&line) {
                        Ok(r) if r.event == "ready" => {
                            let _ = tx.send((i, r));
                        }
                        _ => {
                            let _ = writeln!(log, "{line}");
                        }
                    }
                }
            });
        }
        servers.push(Server {
            name: s.name.clone(),
            child,
            ready: None,
            exited: false,
        });
    }
    drop(ready_tx);

    let result = wait_ready(&mut servers, &ready_rx, &data);
    if let Err(e) = result {
        stop_all(&mut servers);
        return Err(e);
    }
    let readies: Vec<Ready> = servers.iter().filter_map(|s| s.ready.clone()).collect();
    // Every server answers its admin API.
    for r in &readies {
        let admin = Admin::new(&r.admin, &token);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match admin.call("GET", "/api/v1/server", None) {
                Ok((200, _)) => break,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
                other => {
                    stop_all(&mut servers);
                    bail!(
                        "server {} does not answer its admin API: {other:?}",
                        r.server
                    );
                }
            }
        }
    }
    if args.users > 0 {
        let password = args.password.clone().unwrap_or_default();
        let target = readies
            .iter()
            .find(|r| r.roles.iter().any(|x| x == "frontend"))
            .or_else(|| readies.first())
            .ok_or_else(|| anyhow!("no server to provision users on"))?;
        if let Err(e) = provision(
            &Admin::new(&target.admin, &token),
            args.users,
            &password,
            &topology.sip_domain,
        ) {
            stop_all(&mut servers);
            return Err(e);
        }
    }
    write_lab_state(&data, &topology_path, &readies)?;
    if args.json {
        for r in &readies {
            println!(
                "{}",
                serde_json::json!({
                    "server": r.server, "pid": r.pid, "roles": r.roles,
                    "sip_udp": r.sip_udp, "sip_tcp": r.sip_tcp, "admin": r.admin,
                })
            );
        }
    } else {
        print_table(&readies, &topology, &data, &args);
    }
    let _ = std::io::stdout().flush();
    supervise(&mut servers)
}

fn wait_ready(
    servers: &mut [Server],
    ready_rx: &mpsc::Receiver<(usize, Ready)>,
    data: &Path,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let total = servers.len();
    let mut ready = 0;
    while ready < total {
        match ready_rx.recv_timeout(Duration::from_millis(200)) {
            Ok((i, r)) => {
                if let Some(s) = servers.get_mut(i) {
                    s.ready = Some(r);
                    ready += 1;
                    eprintln!("[{ready}/{total}] {} is ready", s.name);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) if ready < total => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        for s in servers.iter_mut().filter(|s| s.ready.is_none()) {
            if let Ok(Some(status)) = s.child.try_wait() {
                let log = data.join(&s.name).join("server.log");
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: Vec<&str> = tail.lines().rev().take(15).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!(
                    "server {} exited ({status}) before it was ready; its log ({}) ends with:\n{}",
                    s.name,
                    log.display(),
                    tail.join("\n")
                );
            }
        }
        if Instant::now() > deadline {
            let missing: Vec<&str> = servers
                .iter()
                .filter(|s| s.ready.is_none())
                .map(|s| s.name.as_str())
                .collect();
            bail!(
                "servers not ready after {} s: {}",
                READY_TIMEOUT.as_secs(),
                missing.join(", ")
            );
        }
    }
    Ok(())
}

/// Adds user0001… with a few concurrent requests (the store commits them in groups).
fn provision(admin: &Admin, users: u32, password: &str, domain: &str) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const WORKERS: u32 = 8;
    let started = Instant::now();
    let next = AtomicU32::new(1);
    let added = AtomicU32::new(0);
    let existing = AtomicU32::new(0);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i > users {
                            return Ok(());
                        }
                        let aor = format!("user{i:04}@{domain}");
                        let body = serde_json::json!({"aor": aor, "password": password});
                        let (status, reply) = admin.call("POST", "/api/v1/users", Some(body))?;
                        match status {
                            201 => added.fetch_add(1, Ordering::Relaxed),
                            409 => existing.fetch_add(1, Ordering::Relaxed),
                            other => bail!("cannot add {aor}: HTTP {other} {reply}"),
                        };
                        let done = added.load(Ordering::Relaxed) + existing.load(Ordering::Relaxed);
                        if done.is_multiple_of(500) {
                            eprint!("\rprovisioning users: {done}/{users}");
                        }
                    }
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| {
            w.join()
                .map_err(|_| anyhow!("a provisioning thread panicked"))?
        })
    })?;
    eprintln!(
        "\rprovisioning users: {users}/{users} ({} added, {} already there) in {:.1} s",
        added.load(Ordering::Relaxed),
        existing.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn write_lab_state(data: &Path, topology: &Path, readies: &[Ready]) -> anyhow::Result<()> {
    let state = serde_json::json!({
        "topology": topology,
        "servers": readies,
    });
    let path = data.join("lab.json");
    let tmp = data.join("lab.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&state)?)?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

fn print_table(readies: &[Ready], topology: &topology::Topology, data: &Path, args: &Args) {
    let rows: Vec<Vec<String>> = readies
        .iter()
        .map(|r| {
            vec![
                r.server.clone(),
                r.pid.to_string(),
                r.roles.join(", "),
                r.sip_udp.clone().unwrap_or_else(|| "-".into()),
                r.sip_tcp.clone().unwrap_or_else(|| "-".into()),
                format!("http://{}", r.admin),
            ]
        })
        .collect();
    let t = crate::render_table(
        &["server", "pid", "roles", "SIP UDP", "SIP TCP", "admin API"],
        &rows,
    );
    println!(
        "Tandem lab `{}` is up (SIP domain {}):",
        topology.name, topology.sip_domain
    );
    println!("{t}");
    if args.users > 0 {
        println!(
            "users: user0001@{d} … user{:04}@{d}, password {:?}",
            args.users,
            args.password.as_deref().unwrap_or_default(),
            d = topology.sip_domain
        );
    }
    println!("admin token: {}", data.join("admin.token").display());
    println!("state and logs: {}/<server>/", data.display());
    println!("Press Ctrl-C to stop the lab.");
}

/// Waits for Ctrl-C or SIGTERM, reporting servers that exit meanwhile; then stops them all.
fn supervise(servers: &mut [Server]) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {
                    for s in servers.iter_mut().filter(|s| !s.exited) {
                        if let Ok(Some(status)) = s.child.try_wait() {
                            s.exited = true;
                            eprintln!("server {} exited ({status}); the others keep running", s.name);
                        }
                    }
                }
            }
        }
        anyhow::Ok(())
    })?;
    eprintln!("stopping the lab…");
    stop_all(servers);
    Ok(ExitCode::SUCCESS)
}

/// SIGTERM every server, then SIGKILL what is still running after 10 s.
fn stop_all(servers: &mut [Server]) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    for s in servers.iter_mut() {
        if let Ok(None) = s.child.try_wait()
            && let Ok(pid) = i32::try_from(s.child.id())
        {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in servers.iter_mut() {
        loop {
            match s.child.try_wait() {
                Ok(Some(_)) | Err(_) => break,
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Ok(None) => {
                    let _ = s.child.kill();
                    let _ = s.child.wait();
                    break;
                }
            }
        }
    }
}
