//! `tandem server`: one server process. It reads the topology, takes the roles the topology
//! gives it (store replicas, front end), serves the admin API, prints one JSON "ready" line on
//! stdout once everything listens, and runs until SIGTERM or Ctrl-C.

use anyhow::{Context, bail};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use topology::{Role, StoreMode, Topology};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The topology file.
    #[arg(long)]
    topology: PathBuf,
    /// This server's name in the topology.
    #[arg(long)]
    name: String,
    /// This server's data directory (default: the topology's data_dir for it).
    #[arg(long)]
    data: Option<PathBuf>,
    /// The admin token file (default: <data>/admin.token, created if missing).
    #[arg(long)]
    admin_token_file: Option<PathBuf>,
    /// Exit when stdin closes (used by `tandem lab`, so servers never outlive it).
    #[arg(long, hide = true)]
    exit_with_stdin: bool,
}

/// The "ready" line a server prints on stdout.
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone)]
pub struct Ready {
    pub event: String,
    pub server: String,
    pub pid: u32,
    pub roles: Vec<String>,
    pub sip_udp: Option<String>,
    pub sip_tcp: Option<String>,
    pub admin: String,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let topology = match topology::load(&args.topology) {
        Ok(t) => t,
        Err(diags) => {
            eprintln!("{diags}");
            bail!("the topology {} is not valid", args.topology.display());
        }
    };
    let Some(me) = topology.server(&args.name).cloned() else {
        let names: Vec<&str> = topology.servers.iter().map(|s| s.name.as_str()).collect();
        bail!(
            "server `{}` is not in the topology {} (its servers: {})",
            args.name,
            args.topology.display(),
            names.join(", ")
        );
    };
    let data = match (&args.data, &me.data_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => bail!(
            "no data directory: pass --data or set data_dir for `{}` in the topology",
            me.name
        ),
    };
    std::fs::create_dir_all(&data)
        .with_context(|| format!("cannot create the data directory {}", data.display()))?;
    let lock = lock_data_dir(&data)?;
    let token_file = args
        .admin_token_file
        .clone()
        .unwrap_or_else(|| data.join("admin.token"));
    let token = crate::ensure_token(&token_file)?;
    if args.exit_with_stdin {
        std::thread::spawn(|| {
            let mut sink = Vec::new();
            let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
            std::process::exit(0);
        });
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = runtime.block_on(serve(&topology, &me, &data, token));
    drop(lock);
    result.map(|()| ExitCode::SUCCESS)
}

/// Takes an exclusive lock on the data directory: two servers on one directory would corrupt it.
fn lock_data_dir(data: &Path) -> anyhow::Result<std::fs::File> {
    let path = data.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            bail!(
                "the data directory {} is in use by another tandem server",
                data.display()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("cannot lock {}", path.display()))
        }
    }
}

async fn serve(
    topology: &Topology,
    me: &topology::Server,
    data: &Path,
    token: String,
) -> anyhow::Result<()> {
    let roles = topology.roles_of(&me.name);
    // Store replicas held by this server.
    let mut stores = Vec::new();
    for (store, replica) in topology.stores_on(&me.name) {
        match store.mode {
            StoreMode::Standalone => {
                let path = data.join("stores").join(&store.name).join("store.sqlite");
                let handle = store::Store::open_local(&path, store::Options::default())
                    .with_context(|| format!("cannot open store `{}`", store.name))?;
                tracing::info!(store = %store.name, path = %path.display(), "store open (standalone)");
                stores.push((store.name.clone(), handle));
            }
            other => bail!(
                "store `{}` is in {} mode (replica role {}), which this version does not run yet: only standalone stores are served",
                store.name,
                other.as_str(),
                replica.role.as_str()
            ),
        }
    }
    // The front end uses its pool's store, which must be one of ours for now.
    let mut frontend = None;
    let mut user_store = stores.first().map(|(_, s)| s.clone());
    if roles.contains(&Role::Frontend) {
        let Some(pool) = topology.frontend_pool_of(&me.name) else {
            bail!("`{}` has the front-end role but no pool", me.name)
        };
        let Some(store) = stores
            .iter()
            .find(|(n, _)| *n == pool.store)
            .map(|(_, s)| s.clone())
        else {
            bail!(
                "pool `{}` uses store `{}`, which does not run on `{}`: remote stores need the store listener, not in this version",
                pool.name,
                pool.store,
                me.name
            );
        };
        let mut config =
            frontend::Config::new(&me.name, &topology.sip_domain, me.sip_udp, me.sip_tcp);
        config.sip = topology.sip.clone();
        let fe = frontend::Frontend::start(config, store.clone())
            .await
            .with_context(|| format!("cannot bind the SIP addresses of `{}`", me.name))?;
        tracing::info!(udp = ?fe.udp_addr(), tcp = ?fe.tcp_addr(), "SIP front end listening");
        user_store = Some(store);
        frontend = Some(fe);
    }
    let admin_listener = tokio::net::TcpListener::bind(me.admin)
        .await
        .with_context(|| format!("cannot bind the admin address {}", me.admin))?;
    let admin_addr = admin_listener.local_addr()?;
    let info = admin::ServerInfo {
        server: me.name.clone(),
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        roles: roles.iter().map(|r| r.to_string()).collect(),
        sip_udp: frontend
            .as_ref()
            .and_then(|f| f.udp_addr())
            .map(|a| a.to_string()),
        sip_tcp: frontend
            .as_ref()
            .and_then(|f| f.tcp_addr())
            .map(|a| a.to_string()),
        admin: admin_addr.to_string(),
    };
    let state = Arc::new(admin::AdminState {
        info: info.clone(),
        domain: topology.sip_domain.clone(),
        token,
        store: user_store,
        frontend: frontend.as_ref().map(|f| f.core().clone()),
    });
    let admin_task = tokio::spawn(admin::serve(admin_listener, state));
    let ready = Ready {
        event: "ready".into(),
        server: info.server,
        pid: info.pid,
        roles: info.roles,
        sip_udp: info.sip_udp,
        sip_tcp: info.sip_tcp,
        admin: info.admin,
    };
    println!("{}", serde_json::to_string(&ready)?);
    tracing::info!(server = %me.name, admin = %admin_addr, "ready");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
        _ = term.recv() => tracing::info!("terminated; stopping"),
        r = admin_task => {
            match r {
                Ok(Ok(())) => bail!("the admin API stopped"),
                Ok(Err(e)) => bail!("the admin API failed: {e}"),
                Err(e) => bail!("the admin API task failed: {e}"),
            }
        }
    }
    drop(frontend);
    drop(stores);
    Ok(())
}
