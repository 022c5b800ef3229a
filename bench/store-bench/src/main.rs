//! store-bench: the measurements behind `bench/store.sh`, all in one run on this machine.
//!
//! 1. The floor: 4 KiB append + fdatasync latency on the disk holding the data, and a 64-byte
//!    loopback TCP round trip.
//! 2. Commit throughput and latency, at each number of concurrent writers, of three Tandem
//!    stores, each on three `tandem server` processes and reached through its listener with
//!    the front end's client:
//!    - "tandem AG": an availability group of three synchronous replicas;
//!    - "tandem mirror": a high-safety mirroring session — principal, mirror and witness; the
//!      principal waits for the mirror on every commit;
//!    - "tandem FC": a failover cluster of three nodes on one shared SQLite database, which
//!      the owner fsyncs on every group commit;
//!
//!    and of a 3-member etcd cluster (Debian's `etcd`, through its gRPC API).
//! 3. Failover: `kill -9` of the primary (the principal, the owner, the etcd leader; never a
//!    witness) → first successful write, over N kills, restarting the killed process and
//!    waiting for the store to be healthy again between kills.
//!
//! Every write is durable before it is acknowledged, in every system: fsynced on a majority
//! (AG, etcd), on the principal and the mirror (mirror, while the mirror is connected), or on
//! the shared disk (FC). Nothing here turns fsync off. The systems run side by side and their
//! steps alternate, so all of them see the same machine. Each step starts after a `sync` of
//! the whole machine: what the step before it left in the page cache (a database that is not
//! fsynced on every commit, as a replica's is not: its log is) is written back then, not in
//! the middle of the next system's step, where the writeback would stall that system's
//! fsyncs for what another system did.
//!
//! ```text
//! store-bench --tandem target/release/tandem --work /tmp/dir [--duration 10] [--writers 1,16,64]
//!             [--kills 20] [--modes ag,mirror,fc] [--etcd etcd|--no-etcd]
//! ```

use anyhow::{Context, anyhow, bail};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use store::client::{StoreAddress, StoreClient};
use store::pool::RpcPool;
use store::proto::{Endpoint, Reply, StoreStatus};

struct Args {
    tandem: PathBuf,
    etcd: Option<String>,
    work: PathBuf,
    duration: Duration,
    writers: Vec<usize>,
    kills: usize,
    modes: Vec<Mode>,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        tandem: PathBuf::from("target/release/tandem"),
        etcd: Some("etcd".into()),
        work: std::env::temp_dir().join("store-bench"),
        duration: Duration::from_secs(10),
        writers: vec![1, 16, 64],
        kills: 20,
        modes: Mode::ALL.to_vec(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| anyhow!("{flag} needs a value"));
        match flag.as_str() {
            "--tandem" => a.tandem = value()?.into(),
            "--etcd" => a.etcd = Some(value()?),
            "--no-etcd" => a.etcd = None,
            "--work" => a.work = value()?.into(),
            "--duration" => {
                let v = value()?;
                a.duration = Duration::from_secs(
                    v.parse()
                        .with_context(|| format!("--duration {v}: seconds"))?,
                )
            }
            "--writers" => {
                let v = value()?;
                a.writers = v
                    .split(',')
                    .map(|w| w.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .with_context(|| format!("--writers {v}: a list like 1,16,64"))?;
                if a.writers.contains(&0) {
                    bail!("--writers {v}: every count must be at least 1");
                }
            }
            "--kills" => {
                let v = value()?;
                a.kills = v.parse().with_context(|| format!("--kills {v}: a count"))?;
            }
            "--modes" => {
                let v = value()?;
                a.modes = Vec::new();
                for key in v.split(',').map(str::trim) {
                    let mode = Mode::ALL
                        .into_iter()
                        .find(|m| m.key() == key)
                        .ok_or_else(|| anyhow!("--modes {v}: a list of ag, mirror and fc"))?;
                    if !a.modes.contains(&mode) {
                        a.modes.push(mode);
                    }
                }
            }
            other => bail!(
                "unknown argument {other}; see the usage at the top of bench/store-bench/src/main.rs"
            ),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let mut args = args()?;
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("cannot create {}", args.work.display()))?;
    // The failover cluster's `shared_path` must be absolute.
    args.work = std::fs::canonicalize(&args.work)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = serde_json::Map::new();
    report.insert(
        "run".into(),
        serde_json::json!({
            "duration_s": args.duration.as_secs(), "writers": args.writers, "kills": args.kills,
            "modes": args.modes.iter().map(|m| m.key()).collect::<Vec<_>>(),
            "etcd": args.etcd.is_some(),
        }),
    );

    progress("floor: 4 KiB append + fdatasync, and a loopback round trip");
    let fsync = fsync_floor(&args.work, 1000, Duration::ZERO)?;
    let rtt = loopback_rtt(5000)?;
    println!(
        "floor: fdatasync of a 4 KiB append p50 {} p99 {} ({:.0}/s); loopback TCP round trip p50 {} p99 {}",
        ms(fsync.p50),
        ms(fsync.p99),
        fsync.rate,
        ms(rtt.p50),
        ms(rtt.p99)
    );
    println!(
        "  (this machine's disk alternates between fast and slow phases: each load step below \
         also samples fdatasync every 20 ms while it runs)"
    );
    report.insert("fsync".into(), fsync.json());
    report.insert("rtt".into(), rtt.json());

    // Every server process is killed when its `Server` is dropped, on errors too.
    let mut servers = Vec::new();
    for &mode in &args.modes {
        servers.push(Server::Tandem(Tandem::start(&args, mode)?));
    }
    if let Some(exe) = &args.etcd {
        servers.push(Server::Etcd(Etcd::start(exe, &args.work)?));
    }
    let mut systems = rt.block_on(run(&args, servers))?;
    for s in &mut systems {
        s.server.stop();
    }
    print_loads(&systems, &mut report);
    print_failovers(&systems, &mut report);
    print_floor_ratio(&systems, rtt.p50, &mut report);

    let path = args.work.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("(all figures: {})", path.display());
    Ok(())
}

/// A Tandem store mode the bench measures, each on three `tandem server` processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// An availability group: a primary and two synchronous secondaries.
    Ag,
    /// High-safety mirroring: a principal, a mirror and a witness.
    Mirror,
    /// A failover cluster: three nodes on one shared database.
    Fc,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Ag, Mode::Mirror, Mode::Fc];

    /// The name in `--modes`, in results.json and of the work subdirectory.
    fn key(self) -> &'static str {
        match self {
            Mode::Ag => "ag",
            Mode::Mirror => "mirror",
            Mode::Fc => "fc",
        }
    }

    /// The short name in ratios ("mirror/AG").
    fn short(self) -> &'static str {
        match self {
            Mode::Ag => "AG",
            Mode::Mirror => "mirror",
            Mode::Fc => "FC",
        }
    }

    /// The column heading.
    fn heading(self) -> &'static str {
        match self {
            Mode::Ag => "tandem AG (3 sync)",
            Mode::Mirror => "tandem mirror (high safety)",
            Mode::Fc => "tandem FC (3 nodes)",
        }
    }

    /// What it is, in a sentence.
    fn what(self) -> &'static str {
        match self {
            Mode::Ag => "availability group: primary + 2 synchronous secondaries",
            Mode::Mirror => "high-safety mirroring: principal + mirror + witness",
            Mode::Fc => "failover cluster: 3 nodes, one shared SQLite database",
        }
    }

    /// The topology's `mode`, and the store keys that mode needs.
    fn topology(self, dir: &Path) -> (&'static str, String) {
        match self {
            Mode::Ag => ("availability-group", String::new()),
            Mode::Mirror => ("mirroring", "safety = \"high-safety\"\n".into()),
            Mode::Fc => (
                "failover-cluster",
                format!("shared_path = \"{}\"\n", Mode::shared_dir(dir).display()),
            ),
        }
    }

    /// The failover cluster's shared storage, under the store's work directory.
    fn shared_dir(dir: &Path) -> PathBuf {
        dir.join("shared")
    }

    /// The topology role of each of the three servers, in order.
    fn roles(self) -> [&'static str; 3] {
        match self {
            Mode::Ag => ["primary", "secondary", "secondary"],
            Mode::Mirror => ["principal", "mirror", "witness"],
            Mode::Fc => ["node", "node", "node"],
        }
    }

    /// What `kill -9` aims at: the status's `primary`, in this mode's words.
    fn primary_word(self) -> &'static str {
        match self {
            Mode::Ag => "primary",
            Mode::Mirror => "principal",
            Mode::Fc => "owner",
        }
    }
}

/// The processes of one system under test.
enum Server {
    Tandem(Tandem),
    Etcd(Etcd),
}

impl Server {
    fn key(&self) -> &'static str {
        match self {
            Server::Tandem(t) => t.mode.key(),
            Server::Etcd(_) => "etcd",
        }
    }

    fn short(&self) -> &'static str {
        match self {
            Server::Tandem(t) => t.mode.short(),
            Server::Etcd(_) => "etcd",
        }
    }

    fn label(&self) -> String {
        match self {
            Server::Tandem(t) => format!("tandem {}", t.mode.short()),
            Server::Etcd(_) => "etcd".into(),
        }
    }

    fn heading(&self) -> &'static str {
        match self {
            Server::Tandem(t) => t.mode.heading(),
            Server::Etcd(_) => "etcd (3 members)",
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Server::Tandem(t) => t.mode.what(),
            Server::Etcd(_) => "etcd: 3 members, default timing and durability",
        }
    }

    /// The heading of its load cells.
    fn load_unit(&self) -> &'static str {
        match self {
            Server::Tandem(_) => "commits/s p50 p99 ms",
            Server::Etcd(_) => "puts/s p50 p99 ms",
        }
    }

    fn children(&self) -> &[Option<Child>] {
        match self {
            Server::Tandem(t) => &t.children,
            Server::Etcd(e) => &e.children,
        }
    }

    /// Waits until it serves writes (for Tandem: healthy, with the bench users added for
    /// `writers` writers) and returns what the writers write to.
    async fn ready(&self, writers: usize) -> anyhow::Result<Target> {
        match self {
            Server::Tandem(t) => {
                t.wait_healthy(Duration::from_secs(60)).await?;
                setup_users(&t.client, writers).await?;
                Ok(Target::Tandem(t.client.clone()))
            }
            Server::Etcd(e) => Ok(Target::Etcd(e.client().await?.kv_client())),
        }
    }

    /// One `kill -9` of the primary (the leader): the time to the first successful write.
    async fn failover(
        &mut self,
        target: &Target,
        k: usize,
        kills: usize,
    ) -> anyhow::Result<Duration> {
        match (self, target) {
            (Server::Tandem(t), _) => t.failover(k, kills).await,
            (Server::Etcd(e), Target::Etcd(kv)) => e.failover(kv, k, kills).await,
            (Server::Etcd(_), Target::Tandem(_)) => {
                bail!("etcd is written through a Tandem client")
            }
        }
    }

    /// What the store recorded of its failovers (detection → first write, ms); etcd: none.
    async fn recorded(&self) -> Vec<u64> {
        match self {
            Server::Tandem(t) => t.recorded().await,
            Server::Etcd(_) => Vec::new(),
        }
    }

    fn stop(&mut self) {
        match self {
            Server::Tandem(t) => t.stop(),
            Server::Etcd(e) => e.stop(),
        }
    }
}

/// A system under test and what was measured of it.
struct System {
    server: Server,
    target: Target,
    /// One per `--writers` count, in order.
    loads: Vec<Load>,
    failover: Failover,
}

impl System {
    fn is_tandem(&self) -> bool {
        matches!(self.server, Server::Tandem(_))
    }
}

async fn run(args: &Args, servers: Vec<Server>) -> anyhow::Result<Vec<System>> {
    let mut systems = Vec::new();
    for server in servers {
        let target = server
            .ready(*args.writers.iter().max().unwrap_or(&1))
            .await?;
        systems.push(System {
            server,
            target,
            loads: Vec::new(),
            failover: Failover::of(Vec::new(), Vec::new()),
        });
    }
    for &w in &args.writers {
        for s in &mut systems {
            progress(&format!(
                "{}: {w} writer(s) for {:?}",
                s.server.label(),
                args.duration
            ));
            Command::new("sync")
                .status()
                .context("sync before a step")?;
            load(&s.target, w, Duration::from_secs(1), None).await;
            let cpu = cpu_of(s.server.children());
            let mut l = load(&s.target, w, args.duration, Some(&args.work)).await;
            l.cpu_per_1000 = (cpu_of(s.server.children()) - cpu) * 1000.0 / l.ok.max(1) as f64;
            s.loads.push(l);
        }
    }
    let mut samples = vec![Vec::new(); systems.len()];
    for k in 0..args.kills {
        for (s, samples) in systems.iter_mut().zip(&mut samples) {
            samples.push(s.server.failover(&s.target, k, args.kills).await?);
        }
    }
    for (s, samples) in systems.iter_mut().zip(samples) {
        s.failover = Failover::of(samples, s.server.recorded().await);
    }
    Ok(systems)
}

/// The pairs of systems compared by ratios, (A, B) for A/B: every other Tandem mode against
/// the AG, then every Tandem mode against etcd.
fn pairs(systems: &[System]) -> Vec<(&System, &System)> {
    let mut out = Vec::new();
    for reference in ["ag", "etcd"] {
        if let Some(b) = systems.iter().find(|s| s.server.key() == reference) {
            for a in systems {
                if a.is_tandem() && a.server.key() != reference {
                    out.push((a, b));
                }
            }
        }
    }
    out
}

fn pair_name(a: &System, b: &System) -> String {
    format!("{}/{}", a.server.short(), b.server.short())
}

/// A ratio, with "-" for a zero denominator.
fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "-".into()
    }
}

fn ratio_json(a: f64, b: f64) -> serde_json::Value {
    if b > 0.0 {
        (a / b).into()
    } else {
        serde_json::Value::Null
    }
}

/// Prints rows of cells, right-aligned, each column as wide as its widest cell.
fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, &w)| format!("{cell:>w$}"))
            .collect();
        println!("{}", cells.join("   ").trim_end());
    }
}

/// The load tables: throughput and latency, the disk and CPU meanwhile, and the ratios.
fn print_loads(systems: &[System], report: &mut serde_json::Map<String, serde_json::Value>) {
    let writers: Vec<usize> = systems
        .first()
        .map(|s| s.loads.iter().map(|l| l.writers).collect())
        .unwrap_or_default();
    let headings = || {
        std::iter::once("writers".to_string())
            .chain(systems.iter().map(|s| s.server.heading().to_string()))
            .collect::<Vec<_>>()
    };

    println!();
    println!("commit throughput and latency (each system on its own three processes):");
    let mut rows = vec![
        headings(),
        std::iter::once(String::new())
            .chain(systems.iter().map(|s| s.server.load_unit().to_string()))
            .collect(),
    ];
    for (i, w) in writers.iter().enumerate() {
        let mut row = vec![w.to_string()];
        row.extend(systems.iter().map(|s| s.loads[i].cell()));
        rows.push(row);
    }
    print_table(&rows);

    println!();
    println!(
        "meanwhile: fdatasync p50 sampled during the step, and the servers' CPU-s per 1000 commits:"
    );
    let mut rows = vec![
        headings(),
        std::iter::once(String::new())
            .chain(
                systems
                    .iter()
                    .map(|_| "fdatasync ms  CPU-s/1000".to_string()),
            )
            .collect(),
    ];
    for (i, w) in writers.iter().enumerate() {
        let mut row = vec![w.to_string()];
        row.extend(systems.iter().map(|s| {
            let l = &s.loads[i];
            format!(
                "{:.2}  {:.2}",
                l.disk.p50.as_secs_f64() * 1e3,
                l.cpu_per_1000
            )
        }));
        rows.push(row);
    }
    print_table(&rows);

    let pairs = pairs(systems);
    if !pairs.is_empty() {
        println!();
        println!(
            "ratios A/B, of commits/s and of p50 latency (A better: commits/s above 1, p50 below 1):"
        );
        let mut rows = vec![
            std::iter::once("writers".to_string())
                .chain(pairs.iter().map(|(a, b)| pair_name(a, b)))
                .collect(),
            std::iter::once(String::new())
                .chain(pairs.iter().map(|_| "commits/s  p50".to_string()))
                .collect(),
        ];
        for (i, w) in writers.iter().enumerate() {
            let mut row = vec![w.to_string()];
            row.extend(pairs.iter().map(|(a, b)| {
                let (a, b) = (&a.loads[i], &b.loads[i]);
                format!(
                    "{}  {}",
                    ratio(a.rate, b.rate),
                    ratio(a.p50.as_secs_f64(), b.p50.as_secs_f64())
                )
            }));
            rows.push(row);
        }
        print_table(&rows);
    }

    let mut loads = Vec::new();
    for (i, w) in writers.iter().enumerate() {
        let mut step = serde_json::Map::new();
        step.insert("writers".into(), (*w).into());
        for s in systems {
            step.insert(s.server.key().into(), s.loads[i].json());
        }
        let ratios: serde_json::Map<String, serde_json::Value> = pairs
            .iter()
            .map(|(a, b)| {
                let (la, lb) = (&a.loads[i], &b.loads[i]);
                (
                    pair_name(a, b),
                    serde_json::json!({
                        "per_s": ratio_json(la.rate, lb.rate),
                        "p50": ratio_json(la.p50.as_secs_f64(), lb.p50.as_secs_f64()),
                        "p99": ratio_json(la.p99.as_secs_f64(), lb.p99.as_secs_f64()),
                    }),
                )
            })
            .collect();
        step.insert("ratios".into(), ratios.into());
        loads.push(serde_json::Value::from(step));
    }
    let described: serde_json::Map<String, serde_json::Value> = systems
        .iter()
        .map(|s| (s.server.key().to_string(), s.server.what().into()))
        .collect();
    report.insert("systems".into(), described.into());
    report.insert("load".into(), loads.into());
}

/// The failover lines and their ratios.
fn print_failovers(systems: &[System], report: &mut serde_json::Map<String, serde_json::Value>) {
    let kills = systems.first().map_or(0, |s| s.failover.samples.len());
    println!();
    println!(
        "failover, kill -9 of the primary (mirror: the principal; FC: the owner; etcd: the leader; \
         never a witness) → first successful write, {kills} kills each:"
    );
    let width = systems
        .iter()
        .map(|s| s.server.label().len())
        .max()
        .unwrap_or(0)
        + 1;
    let mut failover = serde_json::Map::new();
    for s in systems {
        let label = format!("{}:", s.server.label());
        println!("  {label:<width$} {}", s.failover.line());
        failover.insert(s.server.key().into(), s.failover.json());
    }
    let pairs = pairs(systems);
    if !pairs.is_empty() && kills > 0 {
        println!("  ratios A/B (below 1: A fails over faster):");
    }
    let mut ratios = serde_json::Map::new();
    for (a, b) in pairs {
        let (fa, fb) = (&a.failover, &b.failover);
        if kills > 0 {
            println!(
                "    {:<12} {} at p50, {} at p99",
                format!("{}:", pair_name(a, b)),
                ratio(fa.p50.as_secs_f64(), fb.p50.as_secs_f64()),
                ratio(fa.p99.as_secs_f64(), fb.p99.as_secs_f64())
            );
        }
        ratios.insert(
            pair_name(a, b),
            serde_json::json!({
                "p50": ratio_json(fa.p50.as_secs_f64(), fb.p50.as_secs_f64()),
                "p99": ratio_json(fa.p99.as_secs_f64(), fb.p99.as_secs_f64()),
            }),
        );
    }
    failover.insert("ratios".into(), ratios.into());
    report.insert("failover".into(), failover.into());
}

/// Each Tandem mode's single-writer commit p50 against one fdatasync and one round trip.
fn print_floor_ratio(
    systems: &[System],
    rtt_p50: Duration,
    report: &mut serde_json::Map<String, serde_json::Value>,
) {
    let mut out = serde_json::Map::new();
    for s in systems.iter().filter(|s| s.is_tandem()) {
        let Some(one) = s.loads.iter().find(|l| l.writers == 1) else {
            continue;
        };
        let floor = one.disk.p50 + rtt_p50;
        let times = one.p50.as_secs_f64() / floor.as_secs_f64().max(1e-9);
        println!(
            "{} single-writer commit p50 {} = {times:.2} × (one fdatasync p50 during that step + one round trip p50 = {})",
            s.server.label(),
            ms(one.p50),
            ms(floor)
        );
        out.insert(
            s.server.key().into(),
            serde_json::json!({
                "p50_ms": one.p50.as_secs_f64() * 1e3, "floor_ms": floor.as_secs_f64() * 1e3,
                "times_floor": times,
            }),
        );
    }
    report.insert("single_writer_vs_floor".into(), out.into());
}

fn progress(what: &str) {
    eprintln!("# {what}");
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1000.0)
}

/// Latency percentiles of a sample.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    rate: f64,
}

impl Latency {
    fn of(mut samples: Vec<Duration>, elapsed: Duration) -> Latency {
        samples.sort();
        let at = |q: f64| {
            if samples.is_empty() {
                return Duration::ZERO;
            }
            let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
            samples[i]
        };
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            max: samples.last().copied().unwrap_or_default(),
            rate: samples.len() as f64 / elapsed.as_secs_f64().max(1e-9),
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "p50_ms": self.p50.as_secs_f64() * 1e3, "p99_ms": self.p99.as_secs_f64() * 1e3,
            "max_ms": self.max.as_secs_f64() * 1e3, "per_s": self.rate,
        })
    }
}

/// Appends 4 KiB and fdatasyncs, `n` times, in the work directory, `pace` apart.
fn fsync_floor(dir: &Path, n: usize, pace: Duration) -> anyhow::Result<Latency> {
    let path = dir.join("fsync-floor");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let block = [0x5au8; 4096];
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        samples.push(t.elapsed());
        std::thread::sleep(pace);
    }
    let elapsed = start.elapsed();
    drop(f);
    let _ = std::fs::remove_file(&path);
    Ok(Latency::of(samples, elapsed))
}

/// 64-byte ping-pongs over loopback TCP with Nagle off.
fn loopback_rtt(n: usize) -> anyhow::Result<Latency> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let echo = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let mut buf = [0u8; 64];
        loop {
            if s.read_exact(&mut buf).is_err() {
                return Ok(());
            }
            s.write_all(&buf)?;
        }
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut buf = [7u8; 64];
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        let t = Instant::now();
        c.write_all(&buf)?;
        c.read_exact(&mut buf)?;
        samples.push(t.elapsed());
    }
    let elapsed = start.elapsed();
    drop(c);
    let _ = echo.join();
    Ok(Latency::of(samples, elapsed))
}

/// What the writers write to.
#[derive(Clone)]
enum Target {
    Tandem(StoreClient),
    Etcd(etcd_client::KvClient),
}

/// A presence document of about the size of a small key-value pair.
fn document(writer: usize, seq: u64) -> Vec<u8> {
    format!(
        "<presence entity=\"sip:bench{writer}@bench.example\"><status>{seq:020}</status></presence>"
    )
    .into_bytes()
}

impl Target {
    async fn put(&mut self, writer: usize, seq: u64) -> anyhow::Result<()> {
        match self {
            Target::Tandem(c) => {
                c.apply(store::Command::Publish(store::Publish::Create {
                    aor: format!("sip:bench{writer}@bench.example"),
                    etag: format!("{writer}-{seq}-{}", store::node::random_id()),
                    body: document(writer, seq),
                    content_type: "application/pidf+xml".into(),
                    expires_s: 3600,
                    now_ms: now_ms(),
                }))
                .await?;
            }
            Target::Etcd(kv) => {
                kv.put(format!("bench/{writer}/{seq}"), document(writer, seq), None)
                    .await?;
            }
        }
        Ok(())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The bench users the Tandem writers publish for (a publication needs its user).
async fn setup_users(client: &StoreClient, n: usize) -> anyhow::Result<()> {
    for w in 0..n {
        let r = client
            .apply(store::Command::AddUser {
                user: store::User {
                    aor: format!("sip:bench{w}@bench.example"),
                    username: format!("bench{w}"),
                    realm: "bench.example".into(),
                    ha1_md5: "-".into(),
                    ha1_sha256: "-".into(),
                    created_ms: now_ms(),
                },
            })
            .await;
        match r {
            Ok(_) | Err(store::StoreError::Exists(_)) => {}
            Err(e) => bail!("cannot add bench user {w}: {e}"),
        }
    }
    Ok(())
}

/// One load step's result.
struct Load {
    writers: usize,
    ok: usize,
    errors: usize,
    rate: f64,
    p50: Duration,
    p99: Duration,
    /// fdatasync latency sampled while the step ran.
    disk: Latency,
    /// CPU seconds the servers used per 1,000 acknowledged writes.
    cpu_per_1000: f64,
}

impl Load {
    fn cell(&self) -> String {
        let errors = if self.errors > 0 {
            format!(" ({} errors)", self.errors)
        } else {
            String::new()
        };
        format!(
            "{:.0}  {:.1}  {:.1}{errors}",
            self.rate,
            self.p50.as_secs_f64() * 1e3,
            self.p99.as_secs_f64() * 1e3
        )
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "writers": self.writers, "ok": self.ok, "errors": self.errors, "per_s": self.rate,
            "p50_ms": self.p50.as_secs_f64() * 1e3, "p99_ms": self.p99.as_secs_f64() * 1e3,
            "fdatasync_meanwhile": self.disk.json(), "server_cpu_s_per_1000": self.cpu_per_1000,
        })
    }
}

/// `writers` tasks writing back to back for `duration`, each write awaited before the next;
/// with `probe_dir`, fdatasync is sampled there every 20 ms meanwhile.
async fn load(
    target: &Target,
    writers: usize,
    duration: Duration,
    probe_dir: Option<&Path>,
) -> Load {
    let probe = probe_dir.map(|dir| {
        let dir = dir.to_path_buf();
        let n = (duration.as_millis() / 20) as usize;
        std::thread::spawn(move || fsync_floor(&dir, n.max(1), Duration::from_millis(20)))
    });
    let start = Instant::now();
    let end = start + duration;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let mut t = target.clone();
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut errors = 0usize;
            let mut seq = 0u64;
            while Instant::now() < end {
                let at = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), t.put(w, seq)).await {
                    Ok(Ok(())) => samples.push(at.elapsed()),
                    _ => errors += 1,
                }
                seq += 1;
            }
            (samples, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((s, e)) = t.await {
            all.extend(s);
            errors += e;
        }
    }
    let ok = all.len();
    let l = Latency::of(all, start.elapsed());
    let disk = probe
        .and_then(|p| p.join().ok())
        .and_then(Result::ok)
        .unwrap_or(Latency::of(Vec::new(), Duration::from_secs(1)));
    Load {
        writers,
        ok,
        errors,
        rate: l.rate,
        p50: l.p50,
        p99: l.p99,
        disk,
        cpu_per_1000: 0.0,
    }
}

/// Failover times over several kills.
struct Failover {
    samples: Vec<Duration>,
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// What the store recorded for each failover (detection → first write), when it does.
    recorded_ms: Vec<u64>,
}

impl Failover {
    fn of(samples: Vec<Duration>, recorded_ms: Vec<u64>) -> Failover {
        let l = Latency::of(samples.clone(), Duration::from_secs(1));
        Failover {
            samples,
            p50: l.p50,
            p99: l.p99,
            max: l.max,
            recorded_ms,
        }
    }

    fn line(&self) -> String {
        let mut s = format!(
            "p50 {} p99 {} max {} over {} kills",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.samples.len()
        );
        if !self.recorded_ms.is_empty() {
            let mut r = self.recorded_ms.clone();
            r.sort();
            s += &format!(
                "; the store's own records (detection → first write): p50 {} ms, max {} ms",
                r[r.len() / 2],
                r[r.len() - 1]
            );
        }
        s
    }

    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "samples_ms": self.samples.iter().map(|d| d.as_secs_f64() * 1e3).collect::<Vec<_>>(),
            "p50_ms": self.p50.as_secs_f64() * 1e3, "p99_ms": self.p99.as_secs_f64() * 1e3,
            "max_ms": self.max.as_secs_f64() * 1e3, "recorded_rto_ms": self.recorded_ms,
        })
    }
}

/// A free port on 127.0.0.1 (bound and released; the servers bind it right after).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// CPU seconds (user + system) a process used so far, from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at ") ".
    let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else {
        return 0.0;
    };
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let hz = 100.0;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds used so far by all of these processes.
fn cpu_of(children: &[Option<Child>]) -> f64 {
    children.iter().flatten().map(|c| cpu_seconds(c.id())).sum()
}

fn kill9(child: &mut Child) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = child.wait();
}

/// Three `tandem server` processes holding one store, in one of the [`Mode`]s.
struct Tandem {
    mode: Mode,
    tandem: PathBuf,
    dir: PathBuf,
    topology: PathBuf,
    names: Vec<String>,
    children: Vec<Option<Child>>,
    client: StoreClient,
}

impl Tandem {
    fn start(args: &Args, mode: Mode) -> anyhow::Result<Tandem> {
        let dir = args.work.join(mode.key());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let listener = format!("127.0.0.1:{}", free_port()?);
        let mut t = format!(
            "name = \"bench-{}\"\nsip_domain = \"bench.example\"\n[[site]]\nname = \"dc1\"\n",
            mode.key()
        );
        let mut replicas = Vec::new();
        let names: Vec<String> = (1..=3).map(|i| format!("s{i}")).collect();
        for name in &names {
            let rpc = format!("127.0.0.1:{}", free_port()?);
            t += &format!(
                "[[server]]\nname = \"{name}\"\nsite = \"dc1\"\nrpc = \"{rpc}\"\nadmin = \"127.0.0.1:{}\"\n",
                free_port()?
            );
            replicas.push(Endpoint {
                server: name.clone(),
                addr: rpc,
            });
        }
        let (topology_mode, store_keys) = mode.topology(&dir);
        t += &format!(
            "[[store]]\nname = \"store\"\nsite = \"dc1\"\nmode = \"{topology_mode}\"\nlistener = \"{listener}\"\n{store_keys}"
        );
        for (name, role) in names.iter().zip(mode.roles()) {
            t += &format!("[[store.replica]]\nserver = \"{name}\"\nrole = \"{role}\"\n");
        }
        if mode == Mode::Fc {
            std::fs::create_dir_all(Mode::shared_dir(&dir))?;
        }
        let topology = dir.join("topology.toml");
        std::fs::write(&topology, t)?;
        let secret = dir.join("cluster.secret");
        rpc::ClusterSecret::generate(&secret).context("cannot create the cluster secret")?;
        let pool = RpcPool::new(rpc::ClientConfig::new(
            rpc::ClusterSecret::load(&secret)?,
            format!("bench-{}", mode.key()),
            "store-bench",
        ));
        let client = StoreClient::new(
            StoreAddress {
                store: "store".into(),
                listener: Some(listener),
                replicas,
            },
            pool,
        );
        let mut tandem = Tandem {
            mode,
            tandem: args.tandem.clone(),
            dir,
            topology,
            names: names.clone(),
            children: names.iter().map(|_| None).collect(),
            client,
        };
        progress(&format!(
            "starting tandem {}, {} (tandem server × 3)",
            mode.short(),
            mode.what()
        ));
        for i in 0..names.len() {
            tandem.spawn(i)?;
        }
        Ok(tandem)
    }

    /// Starts server `i` and waits for its ready line.
    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let name = &self.names[i];
        let data = self.dir.join(name);
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.join("server.log"))?;
        let mut child = Command::new(&self.tandem)
            .arg("server")
            .arg("--topology")
            .arg(&self.topology)
            .arg("--name")
            .arg(name)
            .arg("--data")
            .arg(&data)
            .arg("--admin-token-file")
            .arg(self.dir.join("admin.token"))
            .arg("--cluster-secret-file")
            .arg(self.dir.join("cluster.secret"))
            .arg("--exit-with-stdin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.tandem.display()))?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let ready = serde_json::from_str::<serde_json::Value>(&line)
                    .map(|v| v["event"] == "ready")
                    .unwrap_or(false);
                if ready {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(Duration::from_secs(60)).is_err() {
            kill9(&mut child);
            bail!(
                "server {name} did not report ready within 60 s (see {})",
                data.join("server.log").display()
            );
        }
        self.children[i] = Some(child);
        Ok(())
    }

    /// The store's status as its primary reports it. Any server answers `status` with its own
    /// view, and the client may have reached one that is not the primary: then ask the
    /// primary it names.
    async fn status(&self) -> Reply<StoreStatus> {
        let st = self.client.status().await?;
        let Some(primary) = st.primary.as_ref().filter(|p| **p != st.reported_by) else {
            return Ok(st);
        };
        let Some(at) = self.client.replicas().iter().find(|r| r.server == *primary) else {
            return Ok(st);
        };
        let bytes = self.client.ask(&at.addr, "status", Vec::new()).await?;
        store::proto::decode::<Reply<StoreStatus>>(&bytes, "status")?
    }

    /// The primary's status says: every server there, healthy and holding every commit
    /// (mirroring: the session synchronized, the principal not exposed).
    fn healthy(&self, st: &StoreStatus) -> bool {
        st.primary.as_ref() == Some(&st.reported_by)
            && st.replicas.len() == self.names.len()
            && st.replicas.iter().all(|r| r.healthy && r.synchronized)
            && (self.mode != Mode::Mirror
                || st
                    .mirroring
                    .as_ref()
                    .is_some_and(|m| m.state == "synchronized" && !m.exposed))
    }

    /// Waits for a primary with every server healthy and synchronized; returns the primary.
    async fn wait_healthy(&self, within: Duration) -> anyhow::Result<String> {
        let end = Instant::now() + within;
        loop {
            let st = self.status().await;
            if let Ok(st) = &st
                && self.healthy(st)
                && let Some(p) = &st.primary
            {
                return Ok(p.clone());
            }
            if Instant::now() >= end {
                bail!(
                    "the tandem {} store is not healthy after {within:?}: {st:?}",
                    self.mode.short()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the primary (principal, owner), times the first successful write, restarts the
    /// killed server.
    async fn failover(&mut self, k: usize, kills: usize) -> anyhow::Result<Duration> {
        let primary = self.wait_healthy(Duration::from_secs(60)).await?;
        let i = self
            .names
            .iter()
            .position(|n| *n == primary)
            .ok_or_else(|| anyhow!("unknown {} {primary}", self.mode.primary_word()))?;
        if self.mode.roles()[i] == "witness" {
            bail!(
                "the tandem {} store names its witness {primary} as {}: a witness is never killed",
                self.mode.short(),
                self.mode.primary_word()
            );
        }
        let mut child = self.children[i]
            .take()
            .ok_or_else(|| anyhow!("{primary} is not running"))?;
        let killed = Instant::now();
        kill9(&mut child);
        let mut seq = 0;
        let took = loop {
            let mut t = Target::Tandem(self.client.clone());
            if t.put(0, 1_000_000 * (k as u64 + 1) + seq).await.is_ok() {
                break killed.elapsed();
            }
            seq += 1;
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no write succeeded within 60 s of killing {primary}");
            }
        };
        progress(&format!(
            "tandem {} kill {}/{kills}: {} {primary} killed, first write after {}",
            self.mode.short(),
            k + 1,
            self.mode.primary_word(),
            ms(took)
        ));
        self.spawn(i)?;
        Ok(took)
    }

    /// The store's own failover records: detection → first write, in ms.
    async fn recorded(&self) -> Vec<u64> {
        match self.status().await {
            Ok(st) => st
                .failovers
                .iter()
                .filter(|ev| ev.first_write_ms > 0)
                .map(|ev| ev.first_write_ms.saturating_sub(ev.detected_ms))
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    fn stop(&mut self) {
        for c in &mut self.children {
            if let Some(mut c) = c.take() {
                kill9(&mut c);
            }
        }
    }
}

impl Drop for Tandem {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Three etcd members on 127.0.0.1, with etcd's default timing (100 ms heartbeat, 1 s
/// election timeout) and its default durability (WAL fsynced before a put is answered).
struct Etcd {
    exe: String,
    dir: PathBuf,
    names: Vec<String>,
    clients: Vec<String>,
    peers: Vec<String>,
    children: Vec<Option<Child>>,
}

impl Etcd {
    fn start(exe: &str, work: &Path) -> anyhow::Result<Etcd> {
        let dir = work.join("etcd");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let names: Vec<String> = (1..=3).map(|i| format!("e{i}")).collect();
        let mut clients = Vec::new();
        let mut peers = Vec::new();
        for _ in &names {
            clients.push(format!("http://127.0.0.1:{}", free_port()?));
            peers.push(format!("http://127.0.0.1:{}", free_port()?));
        }
        let mut e = Etcd {
            exe: exe.into(),
            dir,
            names: names.clone(),
            clients,
            peers,
            children: names.iter().map(|_| None).collect(),
        };
        progress("starting a 3-member etcd cluster");
        for i in 0..names.len() {
            e.spawn(i)?;
        }
        Ok(e)
    }

    fn spawn(&mut self, i: usize) -> anyhow::Result<()> {
        let cluster: Vec<String> = self
            .names
            .iter()
            .zip(&self.peers)
            .map(|(n, p)| format!("{n}={p}"))
            .collect();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", self.names[i])))?;
        let child = Command::new(&self.exe)
            .arg("--name")
            .arg(&self.names[i])
            .arg("--data-dir")
            .arg(self.dir.join(&self.names[i]))
            .arg("--listen-client-urls")
            .arg(&self.clients[i])
            .arg("--advertise-client-urls")
            .arg(&self.clients[i])
            .arg("--listen-peer-urls")
            .arg(&self.peers[i])
            .arg("--initial-advertise-peer-urls")
            .arg(&self.peers[i])
            .arg("--initial-cluster")
            .arg(cluster.join(","))
            .arg("--initial-cluster-state")
            .arg("new")
            .arg("--initial-cluster-token")
            .arg("store-bench")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (apt-get install etcd-server, or pass --no-etcd)",
                    self.exe
                )
            })?;
        self.children[i] = Some(child);
        Ok(())
    }

    async fn client(&self) -> anyhow::Result<etcd_client::Client> {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let r = async {
                let mut c = etcd_client::Client::connect(&self.clients, None).await?;
                c.put("bench/ready", "1", None).await?;
                anyhow::Ok(c)
            }
            .await;
            match r {
                Ok(c) => return Ok(c),
                Err(e) if Instant::now() >= end => {
                    bail!("etcd does not answer within 60 s: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Each running member's (member id, leader id, raft index).
    async fn statuses(&self) -> Vec<Option<(u64, u64, u64)>> {
        let mut out = Vec::new();
        for (i, url) in self.clients.iter().enumerate() {
            if self.children[i].is_none() {
                out.push(None);
                continue;
            }
            let s = tokio::time::timeout(Duration::from_secs(2), async {
                let mut c = etcd_client::Client::connect([url], None).await.ok()?;
                let s = c.status().await.ok()?;
                Some((s.header()?.member_id(), s.leader(), s.raft_index()))
            })
            .await
            .ok()
            .flatten();
            out.push(s);
        }
        out
    }

    /// Waits until every member answers and names the same leader with the same raft index;
    /// returns the leader's position among the members.
    async fn wait_healthy(&self, within: Duration) -> anyhow::Result<usize> {
        let end = Instant::now() + within;
        loop {
            let st = self.statuses().await;
            if st.iter().all(Option::is_some) {
                let st: Vec<(u64, u64, u64)> = st.into_iter().flatten().collect();
                let leader = st[0].1;
                let index = st[0].2;
                if leader != 0
                    && st.iter().all(|s| s.1 == leader && s.2 == index)
                    && let Some(i) = st.iter().position(|s| s.0 == leader)
                {
                    return Ok(i);
                }
            }
            if Instant::now() >= end {
                bail!("etcd is not healthy after {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the leader, times the first successful put, restarts the killed member.
    async fn failover(
        &mut self,
        kv: &etcd_client::KvClient,
        k: usize,
        kills: usize,
    ) -> anyhow::Result<Duration> {
        let i = self.wait_healthy(Duration::from_secs(60)).await?;
        let mut child = self.children[i]
            .take()
            .ok_or_else(|| anyhow!("etcd member {} is not running", self.names[i]))?;
        let killed = Instant::now();
        kill9(&mut child);
        let mut kv = kv.clone();
        let mut seq = 0;
        let took = loop {
            let put = kv.put(format!("bench/failover/{k}/{seq}"), "x", None);
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(1), put).await {
                break killed.elapsed();
            }
            seq += 1;
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no put succeeded within 60 s of killing the etcd leader");
            }
            // A refused connection fails at once: do not spin on the machine's two cores.
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        progress(&format!(
            "etcd kill {}/{kills}: leader {} killed, first put after {}",
            k + 1,
            self.names[i],
            ms(took)
        ));
        self.spawn(i)?;
        Ok(took)
    }

    fn stop(&mut self) {
        for c in &mut self.children {
            if let Some(mut c) = c.take() {
                kill9(&mut c);
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
