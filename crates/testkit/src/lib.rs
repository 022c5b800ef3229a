//! Test harness for process tests: real `tandem server` processes on loopback with free
//! ports, their admin API, a SIP user agent over real sockets, and SIPp runs.

pub mod pool;
pub mod replicated;
pub mod sipp;
pub mod ua;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub use ua::Ua;

/// Test ports come from below the kernel's ephemeral range (32768–60999 by default), so an
/// outgoing connection's local port can never take a port between the moment a test picks it
/// and the moment its server binds it (which is what made labs fail with "Address already in
/// use" now and then when ports came from `bind(0)`).
const PORT_RANGE: std::ops::Range<u16> = 12000..32000;

/// A port free on `ip` for both UDP and TCP at the time of the call, below the ephemeral range.
/// Successive calls in one process walk the range from an offset derived from the process id,
/// so parallel tests and parallel test processes do not pick the same port.
pub fn free_port(ip: &str) -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(PORT_RANGE.end - PORT_RANGE.start);
    let offset = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = PORT_RANGE.start + ((offset + step) % span) as u16;
        let Ok(tcp) = TcpListener::bind((ip, port)) else {
            continue;
        };
        if UdpSocket::bind((ip, port)).is_ok() {
            drop(tcp);
            return port;
        }
    }
    panic!("no free port on {ip} in {PORT_RANGE:?}");
}

/// The SIP settings a test topology uses.
#[derive(Debug, Clone)]
pub struct Options {
    /// Digest algorithms offered, most preferred first.
    pub digest_algorithms: Vec<&'static str>,
    pub register_expires_min_s: u32,
    pub max_contacts_per_user: u32,
    /// Overload control's limits, when not the defaults.
    pub max_queue_delay_ms: Option<u32>,
    pub max_pending_requests: Option<u32>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            digest_algorithms: vec!["SHA-256", "MD5"],
            register_expires_min_s: 60,
            max_contacts_per_user: 10,
            max_queue_delay_ms: None,
            max_pending_requests: None,
        }
    }
}

/// A one-server topology (front end and standalone store in one process) on 127.0.0.1.
pub fn standalone_topology(sip_port: u16, admin_port: u16, options: &Options) -> String {
    format!(
        r#"name = "test"
sip_domain = "{DOMAIN}"
[[site]]
name = "dc1"
[[server]]
name = "fe1"
site = "dc1"
sip_udp = "127.0.0.1:{sip_port}"
sip_tcp = "127.0.0.1:{sip_port}"
admin = "127.0.0.1:{admin_port}"
[[pool]]
name = "pool1"
kind = "frontend"
site = "dc1"
servers = ["fe1"]
store = "store1"
routing_groups = 1
[[store]]
name = "store1"
site = "dc1"
mode = "standalone"
[[store.replica]]
server = "fe1"
role = "primary"
{}"#,
        sip_section(options)
    )
}

/// The replicas of an availability-group test topology.
#[derive(Debug, Clone, Copy)]
pub struct AgReplica {
    pub sync: bool,
    pub automatic: bool,
    pub readable: bool,
}

/// An availability-group topology on 127.0.0.1: store servers `s1`…`sN` (rpc and admin only)
/// holding store `store` (s1 the initial primary; the others as `replicas` says), with a
/// listener, and one front-end server `fe1` using the store through it. Returns the text and
/// the admin port of `fe1`.
pub fn ag_topology(replicas: &[AgReplica], options: &Options) -> (String, u16) {
    let (mut t, fe_admin) = replicated_head(replicas.len(), "availability-group", "");
    for (i, r) in replicas.iter().enumerate() {
        let n = i + 1;
        if n == 1 {
            t.push_str(&format!(
                "[[store.replica]]\nserver = \"s{n}\"\nrole = \"primary\"\n"
            ));
        } else {
            t.push_str(&format!(
                "[[store.replica]]\nserver = \"s{n}\"\nrole = \"secondary\"\ncommit = \"{}\"\nfailover = \"{}\"\nreadable = {}\n",
                if r.sync { "sync" } else { "async" },
                if r.automatic { "automatic" } else { "manual" },
                r.readable
            ));
        }
    }
    t.push_str(&sip_section(options));
    (t, fe_admin)
}

/// A mirroring topology on 127.0.0.1, shaped as [`ag_topology`]'s: `s1` the principal, `s2`
/// the mirror and, `with_witness`, `s3` the witness of store `store` (`safety` is
/// `high-safety` or `high-performance`), with a listener; `fe1` the front end.
pub fn mirroring_topology(safety: &str, with_witness: bool, options: &Options) -> (String, u16) {
    let servers = if with_witness { 3 } else { 2 };
    let (mut t, fe_admin) =
        replicated_head(servers, "mirroring", &format!("safety = \"{safety}\"\n"));
    for (n, role) in ["principal", "mirror", "witness"]
        .iter()
        .take(servers)
        .enumerate()
    {
        t.push_str(&format!(
            "[[store.replica]]\nserver = \"s{}\"\nrole = \"{role}\"\n",
            n + 1
        ));
    }
    t.push_str(&sip_section(options));
    (t, fe_admin)
}

/// A failover-cluster topology on 127.0.0.1, shaped as [`ag_topology`]'s: nodes `s1`…`sN`
/// sharing the database under `shared` (and, `with_witness`, `s{N+1}` the witness) hold store
/// `store`, with a listener; `fe1` the front end.
pub fn cluster_topology(
    nodes: usize,
    with_witness: bool,
    shared: &Path,
    options: &Options,
) -> (String, u16) {
    let servers = nodes + usize::from(with_witness);
    let (mut t, fe_admin) = replicated_head(
        servers,
        "failover-cluster",
        &format!("shared_path = \"{}\"\n", shared.display()),
    );
    for n in 1..=servers {
        let role = if n > nodes { "witness" } else { "node" };
        t.push_str(&format!(
            "[[store.replica]]\nserver = \"s{n}\"\nrole = \"{role}\"\n"
        ));
    }
    t.push_str(&sip_section(options));
    (t, fe_admin)
}

/// The common part of the replicated test topologies: `fe1`, store servers `s1`…`sN`, the
/// front-end pool, and the `[[store]]` header (its replicas follow).
fn replicated_head(servers: usize, mode: &str, store_keys: &str) -> (String, u16) {
    let fe_sip = free_port("127.0.0.1");
    let fe_admin = free_port("127.0.0.1");
    let fe_rpc = free_port("127.0.0.1");
    let listener = free_port("127.0.0.1");
    let mut t = format!(
        r#"name = "replicated-test"
sip_domain = "{DOMAIN}"
[[site]]
name = "dc1"
[[server]]
name = "fe1"
site = "dc1"
sip_udp = "127.0.0.1:{fe_sip}"
sip_tcp = "127.0.0.1:{fe_sip}"
rpc = "127.0.0.1:{fe_rpc}"
admin = "127.0.0.1:{fe_admin}"
"#
    );
    for i in 1..=servers {
        t.push_str(&format!(
            "[[server]]\nname = \"s{i}\"\nsite = \"dc1\"\nrpc = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            free_port("127.0.0.1"),
            free_port("127.0.0.1")
        ));
    }
    t.push_str(&format!(
        "[[pool]]\nname = \"pool1\"\nkind = \"frontend\"\nsite = \"dc1\"\nservers = [\"fe1\"]\nstore = \"store\"\nrouting_groups = 1\n\
         [[store]]\nname = \"store\"\nsite = \"dc1\"\nmode = \"{mode}\"\nlistener = \"127.0.0.1:{listener}\"\n"
    ));
    t.push_str(store_keys);
    (t, fe_admin)
}

fn sip_section(options: &Options) -> String {
    let algorithms: Vec<String> = options
        .digest_algorithms
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let mut section = format!(
        "[sip]\ndigest_algorithms = [{}]\nregister_expires_min_s = {}\nmax_contacts_per_user = {}\n",
        algorithms.join(", "),
        options.register_expires_min_s,
        options.max_contacts_per_user
    );
    if let Some(ms) = options.max_queue_delay_ms {
        section.push_str(&format!("max_queue_delay_ms = {ms}\n"));
    }
    if let Some(n) = options.max_pending_requests {
        section.push_str(&format!("max_pending_requests = {n}\n"));
    }
    section
}

/// A standalone server (front end and store in one process) on free loopback ports.
pub struct Server {
    exe: PathBuf,
    pub dir: PathBuf,
    pub topology: PathBuf,
    pub sip: SocketAddr,
    pub admin: SocketAddr,
    pub token: String,
    child: Option<Child>,
    pub pid: u32,
}

/// The domain of test topologies.
pub const DOMAIN: &str = "example.com";

impl Server {
    /// Writes a one-server topology under `dir` and starts it.
    pub fn start(exe: &Path, dir: &Path, options: &Options) -> Server {
        std::fs::create_dir_all(dir).expect("mkdir");
        // A port found free can be taken by another test's socket before the server binds
        // it: then the server says so, and it is tried again on other ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port("127.0.0.1");
            let admin = free_port("127.0.0.1");
            let topology = standalone_topology(port, admin, options);
            let topology_path = dir.join("topology.toml");
            std::fs::write(&topology_path, topology).expect("write topology");
            let mut s = Server {
                exe: exe.to_path_buf(),
                dir: dir.to_path_buf(),
                topology: topology_path,
                sip: format!("127.0.0.1:{port}").parse().expect("addr"),
                admin: format!("127.0.0.1:{admin}").parse().expect("addr"),
                token: String::new(),
                child: None,
                pid: 0,
            };
            match s.try_spawn() {
                Ok(()) => return s,
                Err(log) if attempt < 3 && log.contains("Address already in use") => continue,
                Err(log) => panic!("server did not become ready; log:\n{log}"),
            }
        }
    }

    fn spawn(&mut self) {
        if let Err(log) = self.try_spawn() {
            panic!("server did not become ready; log:\n{log}");
        }
    }

    /// Starts the server and waits for its ready line; on failure, its log.
    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))
            .expect("log");
        let mut child = Command::new(&self.exe)
            .args(["server", "--topology"])
            .arg(&self.topology)
            .args(["--name", "fe1", "--data"])
            .arg(self.dir.join("data"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn tandem server");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(l) => l,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(
                    std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
                );
            }
        };
        let ready: serde_json::Value = serde_json::from_str(&line).expect("ready line is JSON");
        assert_eq!(ready["event"], "ready", "{line}");
        self.pid = child.id();
        self.child = Some(child);
        self.token = std::fs::read_to_string(self.dir.join("data").join("admin.token"))
            .expect("token")
            .trim()
            .to_string();
        Ok(())
    }

    /// `kill -9` the server and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same topology and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// An admin API request; returns the status and the JSON body (Null when empty).
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        admin_call(&self.admin, Some(&self.token), method, path, body)
    }

    /// Provisions a user; panics on failure.
    pub fn add_user(&self, user: &str, password: &str) {
        let (status, body) = self.admin(
            "POST",
            "/api/v1/users",
            Some(serde_json::json!({"aor": user, "password": password})),
        );
        assert_eq!(status, 201, "add {user}: {body}");
    }

    /// The contacts bound to a user.
    pub fn contacts(&self, user: &str) -> Vec<String> {
        let (status, body) = self.admin("GET", &format!("/api/v1/registrations/{user}"), None);
        assert_eq!(status, 200, "{body}");
        contacts_of(&body)
    }

    /// A UDP user agent for `user` pointed at this server.
    pub fn ua(&self, user: &str, password: &str) -> Ua {
        Ua::udp(self.sip, user, password, DOMAIN)
    }

    /// A TCP user agent for `user` pointed at this server.
    pub fn ua_tcp(&self, user: &str, password: &str) -> Ua {
        Ua::tcp(self.sip, user, password, DOMAIN)
    }

    /// A counter's value from /metrics (summing labelled series whose line starts with `name`).
    pub fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.admin("GET", "/metrics", None);
        let text = body.as_str().unwrap_or_default().to_string();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// An admin API request to any server.
pub fn admin_call(
    addr: &SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .into();
    let url = format!("http://{addr}{path}");
    let auth = token.map(|t| format!("Bearer {t}")).unwrap_or_default();
    let result = match (method, body) {
        ("GET", _) => agent.get(&url).header("Authorization", &auth).call(),
        ("DELETE", _) => agent.delete(&url).header("Authorization", &auth).call(),
        ("POST", Some(b)) => agent.post(&url).header("Authorization", &auth).send_json(b),
        ("PUT", Some(b)) => agent.put(&url).header("Authorization", &auth).send_json(b),
        _ => panic!("unsupported {method}"),
    };
    let mut resp = result.expect("admin API reachable");
    let status = resp.status().as_u16();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let json = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, json)
}

/// The contact URIs of a `GET /api/v1/registrations/{aor}` answer.
pub fn contacts_of(body: &serde_json::Value) -> Vec<String> {
    body.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|b| b["contact"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A fresh directory `base/name` for one test (kept for post-mortems, emptied first). Pass
/// `env!("CARGO_TARGET_TMPDIR")` as `base`.
pub fn test_dir(base: &str, name: &str) -> PathBuf {
    let dir = Path::new(base).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

/// A running `tandem lab up --json`.
pub struct Lab {
    child: Child,
    /// One JSON object per server, as the lab printed them.
    pub servers: Vec<serde_json::Value>,
    pub data: PathBuf,
}

impl Lab {
    /// Starts a lab on `topology` with its state under `data`, waits for its JSON lines.
    pub fn up(exe: &Path, topology: &Path, data: &Path, extra: &[&str]) -> Lab {
        let count = std::fs::read_to_string(topology)
            .expect("topology")
            .matches("[[server]]")
            .count();
        let mut child = Command::new(exe)
            .args(["lab", "up", "--json", "--topology"])
            .arg(topology)
            .arg("--data")
            .arg(data)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tandem lab");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut servers = Vec::new();
        while servers.len() < count {
            match rx.recv_timeout(Duration::from_secs(120)) {
                Ok(line) => {
                    servers.push(serde_json::from_str(&line).expect("lab prints JSON lines"))
                }
                Err(_) => {
                    let _ = child.kill();
                    let err = child.stderr.take().map(|mut e| {
                        let mut s = String::new();
                        let _ = std::io::Read::read_to_string(&mut e, &mut s);
                        s
                    });
                    panic!("lab did not come up: {err:?}");
                }
            }
        }
        Lab {
            child,
            servers,
            data: data.to_path_buf(),
        }
    }

    /// The lab's admin token.
    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// SIGTERM the lab and wait for it; returns its exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM);
        self.child.wait().ok().and_then(|s| s.code())
    }

    /// The lab process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// True while a process with this pid exists (and is not a zombie we could reap).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.split_whitespace().nth(2).is_none_or(|state| state != "Z"))
        .unwrap_or(false)
}

/// One REGISTER of a [`RegisterLoad`]: who, what contact, when sent and answered, the status.
#[derive(Debug, Clone)]
pub struct RegisterRecord {
    pub user: String,
    pub contact: String,
    pub sent: std::time::Instant,
    pub done: std::time::Instant,
    pub status: u16,
}

/// Registration load: `threads` clients, each registering the next user of `user0001…` once
/// (a new socket and contact per user), until stopped or the users run out.
pub struct RegisterLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    pub records: std::sync::Arc<std::sync::Mutex<Vec<RegisterRecord>>>,
}

impl RegisterLoad {
    /// Starts the load against `sip` (users `user0001`… with `password`, at most `users`).
    pub fn start(sip: SocketAddr, threads: usize, users: usize, password: &str) -> RegisterLoad {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let next = std::sync::Arc::new(AtomicUsize::new(1));
        let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let handles = (0..threads)
            .map(|_| {
                let (stop, next, records, password) = (
                    stop.clone(),
                    next.clone(),
                    records.clone(),
                    password.to_string(),
                );
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i > users {
                            return;
                        }
                        let user = format!("user{i:04}");
                        let mut ua = Ua::udp(sip, &user, &password, DOMAIN);
                        let contact = ua.contact();
                        let sent = std::time::Instant::now();
                        let status = ua.register(3600).status;
                        let done = std::time::Instant::now();
                        if let Ok(mut r) = records.lock() {
                            r.push(RegisterRecord {
                                user,
                                contact,
                                sent,
                                done,
                                status,
                            });
                        }
                    }
                })
            })
            .collect();
        RegisterLoad {
            stop,
            handles,
            records,
        }
    }

    /// Waits until at least `n` requests were answered (or `timeout`).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let end = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < end {
            if self.records.lock().map(|r| r.len()).unwrap_or(0) >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stops the clients and returns every record.
    pub fn stop(self) -> Vec<RegisterRecord> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        self.records.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

/// One server of a lab started again on its own (after the lab's process for it was
/// killed): `kill -9`ed and reaped when dropped.
pub struct LabServer {
    child: Child,
    pub name: String,
}

impl LabServer {
    /// Starts server `name` of `topology` on its data under `data` (the lab's data directory)
    /// and waits for its ready line; on failure, what it wrote to stderr.
    pub fn start(
        exe: &Path,
        topology: &Path,
        data: &Path,
        name: &str,
    ) -> Result<LabServer, String> {
        let log_path = data.join(format!("{name}.restarted.log"));
        let log = std::fs::File::create(&log_path).map_err(|e| e.to_string())?;
        let mut child = Command::new(exe)
            .args(["server", "--topology"])
            .arg(topology)
            .args(["--name", name, "--data"])
            .arg(data.join(name))
            .arg("--admin-token-file")
            .arg(data.join("admin.token"))
            .arg("--cluster-secret-file")
            .arg(data.join("cluster.secret"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| e.to_string())?;
        let out = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if line.contains("\"ready\"") => Ok(LabServer {
                child,
                name: name.to_string(),
            }),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                Err(std::fs::read_to_string(&log_path).unwrap_or_default())
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for LabServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
