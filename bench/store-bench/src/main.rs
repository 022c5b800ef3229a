//! store-bench: the measurements behind `bench/store.sh`, all in one run on this machine.
//!
//! 1. The floor: 4 KiB append + fdatasync latency on the disk holding the data, and a 64-byte
//!    loopback TCP round trip.
//! 2. Commit throughput and latency of a 3-replica synchronous availability group (three
//!    `tandem server` processes, reached through the listener with the front end's client) and
//!    of a 3-member etcd cluster (Debian's `etcd`, through its gRPC API), at each number of
//!    concurrent writers.
//! 3. Failover: `kill -9` of the primary (the etcd leader) → first successful write, over N
//!    kills, restarting the killed member and waiting for it to catch up between kills.
//!
//! Every write is durable on a majority before it is acknowledged, in both systems: nothing
//! here turns fsync off.
//!
//! ```text
//! store-bench --tandem target/release/tandem --work /tmp/dir [--duration 10] [--writers 1,16,64]
//!             [--kills 20] [--etcd etcd|--no-etcd]
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
use store::proto::Endpoint;

struct Args {
    tandem: PathBuf,
    etcd: Option<String>,
    work: PathBuf,
    duration: Duration,
    writers: Vec<usize>,
    kills: usize,
}

fn args() -> anyhow::Result<Args> {
    let mut a = Args {
        tandem: PathBuf::from("target/release/tandem"),
        etcd: Some("etcd".into()),
        work: std::env::temp_dir().join("store-bench"),
        duration: Duration::from_secs(10),
        writers: vec![1, 16, 64],
        kills: 20,
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
            other => bail!(
                "unknown argument {other}; see the usage at the top of bench/store-bench/src/main.rs"
            ),
        }
    }
    Ok(a)
}

fn main() -> anyhow::Result<()> {
    let args = args()?;
    std::fs::create_dir_all(&args.work)
        .with_context(|| format!("cannot create {}", args.work.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let mut report = serde_json::Map::new();

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

    // Both systems run side by side; their steps alternate so both see the same machine.
    let mut ag = Ag::start(&args)?;
    let mut etcd = match &args.etcd {
        Some(exe) => Some(Etcd::start(exe, &args.work)?),
        None => None,
    };
    let result = rt.block_on(run(&args, &mut ag, etcd.as_mut()));
    ag.stop();
    if let Some(e) = etcd.as_mut() {
        e.stop();
    }
    let (steps, ag_failover, etcd_failover) = result?;

    println!();
    println!(
        "{:>8}  {:>24}  {:>24}  {:>6}  {:>17}  {:>15}",
        "writers", "tandem AG (3 sync)", "etcd (3 members)", "ratio", "fdatasync meanwhile", "server CPU-s"
    );
    println!(
        "{:>8}  {:>24}  {:>24}  {:>6}  {:>17}  {:>15}",
        "", "commits/s p50 p99 ms", "puts/s p50 p99 ms", "", "p50 ms (AG/etcd)", "per 1000 (AG/etcd)"
    );
    let mut loads = Vec::new();
    for st in &steps {
        let ratio = st
            .etcd
            .as_ref()
            .map_or("-".to_string(), |e| format!("{:.2}", st.ag.rate / e.rate.max(1e-9)));
        println!(
            "{:>8}  {:>24}  {:>24}  {:>6}  {:>17}  {:>15}",
            st.ag.writers,
            st.ag.cell(),
            st.etcd.as_ref().map_or("-".into(), Load::cell),
            ratio,
            format!(
                "{:.2} / {}",
                st.ag.disk.p50.as_secs_f64() * 1e3,
                st.etcd
                    .as_ref()
                    .map_or("-".into(), |e| format!("{:.2}", e.disk.p50.as_secs_f64() * 1e3))
            ),
            format!(
                "{:.2} / {}",
                st.ag.cpu_per_1000,
                st.etcd
                    .as_ref()
                    .map_or("-".into(), |e| format!("{:.2}", e.cpu_per_1000))
            )
        );
        loads.push(serde_json::json!({
            "writers": st.ag.writers, "tandem": st.ag.json(), "etcd": st.etcd.as_ref().map(Load::json),
        }));
    }
    report.insert("load".into(), loads.into());
    println!();
    println!(
        "failover, kill -9 of the primary (etcd: the leader) → first successful write, {} kills each:",
        ag_failover.samples.len()
    );
    println!("  tandem AG: {}", ag_failover.line());
    if let Some(e) = &etcd_failover {
        println!("  etcd:      {}", e.line());
        println!(
            "  etcd/tandem: {:.2} at p50, {:.2} at p99",
            e.p50.as_secs_f64() / ag_failover.p50.as_secs_f64().max(1e-9),
            e.p99.as_secs_f64() / ag_failover.p99.as_secs_f64().max(1e-9)
        );
    }
    report.insert("failover_tandem".into(), ag_failover.json());
    report.insert(
        "failover_etcd".into(),
        etcd_failover
            .as_ref()
            .map_or(serde_json::Value::Null, Failover::json),
    );
    if let Some(one) = steps.iter().map(|s| &s.ag).find(|l| l.writers == 1) {
        let floor = one.disk.p50 + rtt.p50;
        println!(
            "single-writer commit p50 {} = {:.2} × (one fdatasync p50 during that step + one round trip p50 = {})",
            ms(one.p50),
            one.p50.as_secs_f64() / floor.as_secs_f64().max(1e-9),
            ms(floor)
        );
    }
    let path = args.work.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    println!("(all figures: {})", path.display());
    Ok(())
}

/// One concurrency step of both systems.
struct Step {
    ag: Load,
    etcd: Option<Load>,
}

async fn run(
    args: &Args,
    ag: &mut Ag,
    mut etcd: Option<&mut Etcd>,
) -> anyhow::Result<(Vec<Step>, Failover, Option<Failover>)> {
    let client = ag.client()?;
    ag.wait_healthy(&client, Duration::from_secs(60)).await?;
    setup_users(&client, *args.writers.iter().max().unwrap_or(&1)).await?;
    let etcd_client = match etcd.as_deref() {
        Some(e) => Some(e.client().await?),
        None => None,
    };
    let mut steps = Vec::new();
    for &w in &args.writers {
        progress(&format!("tandem AG: {w} writer(s) for {:?}", args.duration));
        let target = Target::Ag(client.clone());
        load(&target, w, Duration::from_secs(1), None).await;
        let cpu = cpu_of(&ag.children);
        let mut a = load(&target, w, args.duration, Some(&args.work)).await;
        a.cpu_per_1000 = (cpu_of(&ag.children) - cpu) * 1000.0 / a.ok.max(1) as f64;
        let e = match &etcd_client {
            Some(c) => {
                progress(&format!("etcd: {w} writer(s) for {:?}", args.duration));
                let target = Target::Etcd(c.kv_client());
                load(&target, w, Duration::from_secs(1), None).await;
                let children = etcd.as_deref().map_or(&[][..], |e| &e.children[..]);
                let cpu = cpu_of(children);
                let mut e = load(&target, w, args.duration, Some(&args.work)).await;
                e.cpu_per_1000 = (cpu_of(children) - cpu) * 1000.0 / e.ok.max(1) as f64;
                Some(e)
            }
            None => None,
        };
        steps.push(Step { ag: a, etcd: e });
    }
    let mut ag_samples = Vec::new();
    let mut etcd_samples = Vec::new();
    for k in 0..args.kills {
        ag_samples.push(ag.failover(&client, k, args.kills).await?);
        if let (Some(e), Some(c)) = (etcd.as_deref_mut(), &etcd_client) {
            etcd_samples.push(e.failover(c, k, args.kills).await?);
        }
    }
    let recorded = ag.recorded(&client).await;
    let ag_failover = Failover::of(ag_samples, recorded);
    let etcd_failover = etcd_client.map(|_| Failover::of(etcd_samples, Vec::new()));
    Ok((steps, ag_failover, etcd_failover))
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
    Ag(StoreClient),
    Etcd(etcd_client::KvClient),
}

/// A presence document of about the size of a small key-value pair.
fn document(writer: usize, seq: u64) -> Vec<u8> {
    format!("<presence entity=\"sip:bench{writer}@bench.example\"><status>{seq:020}</status></presence>").into_bytes()
}

impl Target {
    async fn put(&mut self, writer: usize, seq: u64) -> anyhow::Result<()> {
        match self {
            Target::Ag(c) => {
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

/// The bench users the AG writers publish for (a publication needs its user).
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
async fn load(target: &Target, writers: usize, duration: Duration, probe_dir: Option<&Path>) -> Load {
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

/// Three `tandem server` processes holding one availability group.
struct Ag {
    tandem: PathBuf,
    dir: PathBuf,
    topology: PathBuf,
    names: Vec<String>,
    children: Vec<Option<Child>>,
    address: StoreAddress,
}

impl Ag {
    fn start(args: &Args) -> anyhow::Result<Ag> {
        let dir = args.work.join("ag");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let listener = format!("127.0.0.1:{}", free_port()?);
        let mut t = String::from(
            "name = \"bench-ag\"\nsip_domain = \"bench.example\"\n[[site]]\nname = \"dc1\"\n",
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
        t += &format!(
            "[[store]]\nname = \"store\"\nsite = \"dc1\"\nmode = \"availability-group\"\nlistener = \"{listener}\"\n"
        );
        for (i, name) in names.iter().enumerate() {
            let role = if i == 0 { "primary" } else { "secondary" };
            t += &format!("[[store.replica]]\nserver = \"{name}\"\nrole = \"{role}\"\n");
        }
        let topology = dir.join("topology.toml");
        std::fs::write(&topology, t)?;
        rpc::ClusterSecret::generate(dir.join("cluster.secret"))
            .context("cannot create the cluster secret")?;
        let mut ag = Ag {
            tandem: args.tandem.clone(),
            dir,
            topology,
            names: names.clone(),
            children: names.iter().map(|_| None).collect(),
            address: StoreAddress {
                store: "store".into(),
                listener: Some(listener),
                replicas,
            },
        };
        progress("starting a 3-replica availability group (tandem server × 3)");
        for i in 0..names.len() {
            ag.spawn(i)?;
        }
        Ok(ag)
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

    fn client(&self) -> anyhow::Result<StoreClient> {
        let secret = rpc::ClusterSecret::load(self.dir.join("cluster.secret"))?;
        let pool = RpcPool::new(rpc::ClientConfig::new(secret, "bench-ag", "store-bench"));
        Ok(StoreClient::new(self.address.clone(), pool))
    }

    /// Waits for a primary with every replica healthy and synchronized; returns the primary.
    async fn wait_healthy(&self, client: &StoreClient, within: Duration) -> anyhow::Result<String> {
        let end = Instant::now() + within;
        loop {
            let st = client.status().await;
            if let Ok(st) = &st
                && let Some(p) = &st.primary
                && st.replicas.len() == self.names.len()
                && st.replicas.iter().all(|r| r.healthy && r.synchronized)
            {
                return Ok(p.clone());
            }
            if Instant::now() >= end {
                bail!("the availability group is not healthy after {within:?}: {st:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Kills the primary, times the first successful write, restarts the killed server.
    async fn failover(&mut self, client: &StoreClient, k: usize, kills: usize) -> anyhow::Result<Duration> {
        let primary = self.wait_healthy(client, Duration::from_secs(60)).await?;
        let i = self
            .names
            .iter()
            .position(|n| *n == primary)
            .ok_or_else(|| anyhow!("unknown primary {primary}"))?;
        let mut child = self.children[i]
            .take()
            .ok_or_else(|| anyhow!("{primary} is not running"))?;
        let killed = Instant::now();
        kill9(&mut child);
        let mut seq = 0;
        let took = loop {
            let mut t = Target::Ag(client.clone());
            if t.put(0, 1_000_000 * (k as u64 + 1) + seq).await.is_ok() {
                break killed.elapsed();
            }
            seq += 1;
            if killed.elapsed() > Duration::from_secs(60) {
                bail!("no write succeeded within 60 s of killing {primary}");
            }
        };
        progress(&format!(
            "tandem AG kill {}/{kills}: {primary} killed, first write after {}",
            k + 1,
            ms(took)
        ));
        self.spawn(i)?;
        Ok(took)
    }

    /// The store's own failover records: detection → first write, in ms.
    async fn recorded(&self, client: &StoreClient) -> Vec<u64> {
        match client.status().await {
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
        for c in self.children.iter_mut().flatten() {
            kill9(c);
        }
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
        client: &etcd_client::Client,
        k: usize,
        kills: usize,
    ) -> anyhow::Result<Duration> {
        let i = self.wait_healthy(Duration::from_secs(60)).await?;
        let mut child = self.children[i]
            .take()
            .ok_or_else(|| anyhow!("etcd member {} is not running", self.names[i]))?;
        let killed = Instant::now();
        kill9(&mut child);
        let mut kv = client.kv_client();
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
        for c in self.children.iter_mut().flatten() {
            kill9(c);
        }
    }
}
