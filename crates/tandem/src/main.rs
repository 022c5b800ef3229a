//! `tandem`: one binary for every role and tool.
//!
//! - `tandem server` runs one server of a topology (its roles come from the topology).
//! - `tandem lab up` runs every server of a topology as its own process on this machine.
//! - `tandem topology check|show` validates and prints a topology file.
//! - `tandem user …` and `tandem registrations` talk to a server's admin API.

mod client;
mod lab;
mod pools;
mod server;
mod stores;
mod topo;

use clap::{Parser, Subcommand};

/// mimalloc: under SIP load, glibc's malloc spent a third of the CPU consolidating the
/// per-request task allocations (measured with perf at 7,000 REGISTER/s).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "tandem", version, about = "Tandem: SIP registrar, presence and IM with HA/DR", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where admin commands send their requests.
#[derive(clap::Args, Clone, Debug)]
pub struct AdminTarget {
    /// Admin API address (host:port); default: the lab's first server.
    #[arg(long, env = "TANDEM_ADMIN", global = true)]
    admin: Option<String>,
    /// File holding the admin token.
    #[arg(
        long,
        env = "TANDEM_TOKEN_FILE",
        global = true,
        default_value = "tandem-lab/admin.token"
    )]
    token_file: PathBuf,
    /// Print JSON for scripts instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Run one server of a topology (`--topology FILE --name SERVER`), or act on a running
    /// one: `drain`, `resume`.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Server {
        #[command(subcommand)]
        action: Option<ServerAction>,
        #[command(flatten)]
        args: server::Args,
    },
    /// Run a whole topology on this machine.
    Lab {
        #[command(subcommand)]
        command: LabCommand,
    },
    /// Validate or print a topology file.
    Topology {
        #[command(subcommand)]
        command: TopologyCommand,
    },
    /// Provision users.
    User {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Replicated stores: status, failover, forced service, replicas.
    Store {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        command: StoreCommand,
    },
    /// Front-end pools: fabric state of servers and routing groups.
    Pool {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        command: PoolCommand,
    },
    /// Log shipping to a DR site.
    Logship {
        #[command(flatten)]
        target: AdminTarget,
        #[command(subcommand)]
        command: LogshipCommand,
    },
    /// Show a user's registered contacts.
    Registrations {
        #[command(flatten)]
        target: AdminTarget,
        /// The user (alice, alice@example.com or sip:alice@example.com).
        aor: String,
    },
}

#[derive(Subcommand)]
enum LabCommand {
    /// Start every server of the topology as its own process and wait for Ctrl-C.
    Up(lab::Args),
}

#[derive(Subcommand)]
enum TopologyCommand {
    /// Check a topology file: prints every problem with file, line and rule, or that it is valid.
    Check { file: PathBuf },
    /// Print a topology file as tables.
    Show { file: PathBuf },
}

#[derive(Subcommand)]
pub enum ServerAction {
    /// Moves every routing-group primary off SERVER (planned failovers, no data loss) and
    /// stops it taking new clients (OPTIONS answer 503, new TCP connections are closed), so
    /// it can be stopped without failing a request. Ends when the server restarts, or with
    /// `server resume`. Its admin address: --admin, else the lab's record of SERVER.
    Drain {
        server: String,
        #[command(flatten)]
        target: AdminTarget,
    },
    /// Ends a drain: SERVER takes clients again and may become primary again.
    Resume {
        server: String,
        #[command(flatten)]
        target: AdminTarget,
    },
}

#[derive(Subcommand)]
pub enum PoolCommand {
    /// Each server's health, each routing group's primary, secondaries and lag, and the
    /// pool's state (healthy, degraded, partial-outage, down) with the reason. Exits 2 when
    /// some group is not serving.
    Status { name: String },
    /// Waits (up to --wait seconds) until every routing group of the pool has a primary, as
    /// its servers start; when they do not, says which servers are down, which groups lack a
    /// majority and which servers to start. Exits 2 if the pool does not serve everyone.
    Start {
        name: String,
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Recovers a routing group that lost the majority of its replicas for good: its most
    /// advanced surviving replica becomes the only member, after stating what it lacks.
    /// Without --accept-data-loss, only says what it would do and lose (and exits 2).
    ResetGroup {
        name: String,
        group: u32,
        #[arg(long)]
        accept_data_loss: bool,
    },
}

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Every replica with its role, commit mode, synchronization, lag and health; the term and
    /// lease; the last failovers with their measured RPO and RTO.
    Status { name: String },
    /// Planned failover to a synchronized sync replica (no data loss).
    Failover {
        name: String,
        /// The replica to make primary (default: the most advanced sync replica).
        #[arg(long)]
        to: Option<String>,
    },
    /// Unplanned failover to a replica that may lack committed transactions: states the loss,
    /// asks for confirmation, then makes it the only member of a new generation.
    ForceService {
        name: String,
        #[arg(long)]
        to: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Adds a replica while the store serves.
    AddReplica {
        name: String,
        #[arg(long)]
        server: String,
        /// The server's rpc address (default: from the topology the lab runs).
        #[arg(long)]
        addr: Option<String>,
        #[arg(long, default_value = "async")]
        commit: String,
    },
    /// Removes a replica while the store serves.
    RemoveReplica {
        name: String,
        #[arg(long)]
        server: String,
    },
    /// Changes a replica's commit mode (sync: a voter; async: a learner).
    SetCommit {
        name: String,
        #[arg(long)]
        server: String,
        #[arg(long)]
        commit: String,
    },
    /// Mirroring: switches between high-safety (commits wait for the mirror) and
    /// high-performance (they do not), while the store serves.
    SetSafety {
        name: String,
        /// high-safety or high-performance
        safety: String,
    },
    /// Mirroring: lets the topology's witness vote again (automatic failover; high safety).
    AddWitness { name: String },
    /// Mirroring: takes the witness out (no automatic failover).
    RemoveWitness { name: String },
    /// A full backup onto a backup share, taken by the store's primary (a failover cluster's
    /// owner) while it serves.
    Backup {
        name: String,
        /// The share directory, as the serving server sees it (default: the share of the
        /// topology's log-shipping link from this store).
        #[arg(long)]
        to: Option<String>,
        /// A log backup: the commands logged since the last one (turns the store's
        /// transaction log on, and takes a full backup first when the share has no chain).
        #[arg(long)]
        log: bool,
    },
    /// The full backups of a store on a share (read here, no server needed).
    ListBackups {
        name: String,
        #[arg(long)]
        from: std::path::PathBuf,
    },
    /// Checks a store's backups on a share: size and SHA-256 against the manifest, SQLite's
    /// integrity check, the LSN inside. Fails if any backup is bad.
    VerifyBackup {
        name: String,
        #[arg(long)]
        from: std::path::PathBuf,
        /// Only the backup at this LSN.
        #[arg(long)]
        lsn: Option<u64>,
    },
    /// Restores a store into a new database file from its backups: a full backup, then the
    /// log backups after it, up to the latest command, an LSN, or a time.
    Restore {
        name: String,
        #[arg(long)]
        from: std::path::PathBuf,
        /// The LSN to land on: exactly after that command.
        #[arg(long, conflicts_with = "to_time")]
        to_lsn: Option<u64>,
        /// The time to land on (RFC 3339, e.g. 2026-11-24T04:00:00Z, or unix ms): after the
        /// last command applied at or before it.
        #[arg(long)]
        to_time: Option<String>,
        /// The database file to create (it must not exist).
        #[arg(long)]
        into: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
pub enum LogshipCommand {
    /// The links whose secondary the server holds: the last backup, copy and restore (time
    /// and LSN), the lag in seconds and transactions, and the alerts.
    Status,
    /// Brings a link's secondary online as a writable store: a tail-log backup of the
    /// primary first when it can be read, then everything restored; states the last
    /// transaction restored. The old primary will not write again. Run it on the secondary's
    /// server.
    Failover {
        /// The log-shipping link.
        link: String,
        /// The primary's database file, when its site is lost but its disk can still be read
        /// (default: ask the primary store, if it is replicated and answers).
        #[arg(long)]
        tail_from: Option<std::path::PathBuf>,
        /// A planned failover (a fail-back, a site move): the primary, still running, closes
        /// its writes and ships its last log backup first, so nothing is lost. Fails, changing
        /// nothing, if the primary does not answer.
        #[arg(long, conflicts_with = "tail_from")]
        planned: bool,
    },
    /// The users of a standby secondary, read between restores, with how stale they may be.
    Users {
        /// The log-shipping link.
        link: String,
    },
    /// After a failover, reverses the roles: the store now online starts a new backup chain
    /// and ships its log to the old primary, whose servers reseed it as the new secondary
    /// when they start. Run it on the server of the store now online.
    Reverse {
        /// The log-shipping link.
        link: String,
    },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add a user.
    Add {
        aor: String,
        /// The password (asked for on the terminal when absent).
        #[arg(long)]
        password: Option<String>,
    },
    /// List users.
    List,
    /// Remove a user and everything it registered, published or subscribed.
    Remove { aor: String },
    /// Change a user's password.
    SetPassword {
        aor: String,
        /// The new password (asked for on the terminal when absent).
        #[arg(long)]
        password: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Server {
            action: Some(action),
            ..
        } => pools::server_action(action),
        Command::Server { action: None, args } => server::run(args),
        Command::Lab {
            command: LabCommand::Up(args),
        } => lab::up(args),
        Command::Topology {
            command: TopologyCommand::Check { file },
        } => topo::check(&file),
        Command::Topology {
            command: TopologyCommand::Show { file },
        } => topo::show(&file),
        Command::User { target, command } => client::user(&target, command),
        Command::Registrations { target, aor } => client::registrations(&target, &aor),
        Command::Store { target, command } => stores::run(&target, command),
        Command::Logship { target, command } => stores::logship(&target, command),
        Command::Pool { target, command } => pools::run(&target, command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `n` random bytes as hex (tokens).
pub fn random_hex(n: usize) -> anyhow::Result<String> {
    let mut buf = vec![0u8; n];
    getrandom::fill(&mut buf).map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    Ok(hex::encode(buf))
}

/// Reads a token file, or creates it with a new random token (mode 0600).
pub fn ensure_token(path: &std::path::Path) -> anyhow::Result<String> {
    use anyhow::Context;
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the admin token {}", path.display()));
        }
    }
    let token = random_hex(24)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(token.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(token)
}

/// Renders a table for the terminal.
pub fn render_table<H: ToString, C: ToString>(header: &[H], rows: &[Vec<C>]) -> String {
    let mut t = comfy_table::Table::new();
    t.load_style(comfy_table::presets::UTF8_FULL_CONDENSED);
    t.set_header(header.iter().map(ToString::to_string).collect::<Vec<_>>());
    for r in rows {
        t.add_row(r.iter().map(ToString::to_string).collect::<Vec<_>>());
    }
    t.to_string()
}
