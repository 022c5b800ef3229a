//! A front-end pool lab as the process tests drive it: `fe1`…`feN` serving SIP, their users'
//! data in routing groups, the pool's store an availability group on the first three; pool
//! status through any server's admin API; signals and restarts by server name; a load of
//! clients that register, publish and subscribe, each falling over to the next server as a
//! client with several registrar addresses would.

use crate::ua::Ua;
use crate::{DOMAIN, Lab, LabServer, admin_call, free_port, test_dir};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Where a pool lab's store lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreOn {
    /// An availability group of three synchronous replicas on the pool's first three servers
    /// (fewer if the pool has fewer), as the enterprise example has it.
    Pool,
    /// An availability group of one replica on a back-end server `be1`, which outlives the
    /// loss of any of the pool's servers.
    Backend,
}

/// A pool topology on 127.0.0.1: `servers` front ends `fe1`… in pool `pool1` with `groups`
/// routing groups; its store `store` (with a listener) where `store_on` says.
pub fn pool_topology(servers: usize, groups: u32, store_on: StoreOn) -> String {
    let mut t =
        format!("name = \"pool-test\"\nsip_domain = \"{DOMAIN}\"\n[[site]]\nname = \"dc1\"\n");
    for i in 1..=servers {
        let sip = free_port("127.0.0.1");
        t.push_str(&format!(
            "[[server]]\nname = \"fe{i}\"\nsite = \"dc1\"\nsip_udp = \"127.0.0.1:{sip}\"\nsip_tcp = \"127.0.0.1:{sip}\"\nrpc = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            free_port("127.0.0.1"),
            free_port("127.0.0.1")
        ));
    }
    if store_on == StoreOn::Backend {
        t.push_str(&format!(
            "[[server]]\nname = \"be1\"\nsite = \"dc1\"\nrpc = \"127.0.0.1:{}\"\nadmin = \"127.0.0.1:{}\"\n",
            free_port("127.0.0.1"),
            free_port("127.0.0.1")
        ));
    }
    let names: Vec<String> = (1..=servers).map(|i| format!("\"fe{i}\"")).collect();
    t.push_str(&format!(
        "[[pool]]\nname = \"pool1\"\nkind = \"frontend\"\nsite = \"dc1\"\nservers = [{}]\nstore = \"store\"\nrouting_groups = {groups}\n\
         [[store]]\nname = \"store\"\nsite = \"dc1\"\nmode = \"availability-group\"\nlistener = \"127.0.0.1:{}\"\n",
        names.join(", "),
        free_port("127.0.0.1")
    ));
    if store_on == StoreOn::Backend {
        t.push_str("[[store.replica]]\nserver = \"be1\"\nrole = \"primary\"\n");
        return t;
    }
    for i in 1..=servers.min(3) {
        if i == 1 {
            t.push_str("[[store.replica]]\nserver = \"fe1\"\nrole = \"primary\"\n");
        } else {
            t.push_str(&format!(
                "[[store.replica]]\nserver = \"fe{i}\"\nrole = \"secondary\"\ncommit = \"sync\"\nfailover = \"automatic\"\n"
            ));
        }
    }
    t
}

/// A running pool lab.
pub struct PoolLab {
    pub lab: Lab,
    pub dir: PathBuf,
    pub topology: PathBuf,
    pub token: String,
    exe: PathBuf,
    /// Servers started again after a kill, by name.
    restarted: Mutex<Vec<LabServer>>,
}

impl PoolLab {
    /// Starts a lab of [`pool_topology`] (the store on the pool's servers) with `users` users
    /// whose password is "pw".
    pub fn start(
        exe: &Path,
        tmp: &str,
        name: &str,
        servers: usize,
        groups: u32,
        users: usize,
    ) -> PoolLab {
        PoolLab::start_with(exe, tmp, name, servers, groups, users, StoreOn::Pool)
    }

    /// [`PoolLab::start`] with the store where `store_on` says.
    pub fn start_with(
        exe: &Path,
        tmp: &str,
        name: &str,
        servers: usize,
        groups: u32,
        users: usize,
        store_on: StoreOn,
    ) -> PoolLab {
        let topology = pool_topology(servers, groups, store_on);
        PoolLab::start_topology(exe, tmp, name, &topology, users)
    }

    /// A lab of the pool topology `text` (a [`pool_topology`], perhaps edited).
    pub fn start_topology(exe: &Path, tmp: &str, name: &str, text: &str, users: usize) -> PoolLab {
        let dir = test_dir(tmp, name);
        let topology = dir.join("topology.toml");
        std::fs::write(&topology, text).expect("write the topology");
        let lab = Lab::up(
            exe,
            &topology,
            &dir.join("data"),
            &["--users", &users.to_string(), "--password", "pw"],
        );
        let token = lab.token();
        PoolLab {
            lab,
            dir,
            topology,
            token,
            exe: exe.to_path_buf(),
            restarted: Mutex::new(Vec::new()),
        }
    }

    fn server(&self, name: &str) -> &serde_json::Value {
        self.lab
            .servers
            .iter()
            .find(|s| s["server"] == name)
            .unwrap_or_else(|| panic!("no server {name} in the lab"))
    }

    /// A server's SIP address (UDP and TCP share it).
    pub fn sip(&self, name: &str) -> SocketAddr {
        self.server(name)["sip_udp"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no SIP address"))
    }

    /// A server's admin address.
    pub fn admin(&self, name: &str) -> SocketAddr {
        self.server(name)["admin"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name} has no admin address"))
    }

    /// Every server's name.
    pub fn names(&self) -> Vec<String> {
        self.lab
            .servers
            .iter()
            .filter_map(|s| s["server"].as_str().map(str::to_string))
            .collect()
    }

    /// An admin API call on server `via`.
    pub fn call(&self, via: &str, method: &str, path: &str) -> (u16, serde_json::Value) {
        admin_call(&self.admin(via), Some(&self.token), method, path, None)
    }

    /// Runs the CLI against server `via`'s admin API.
    pub fn cli(&self, via: &str, args: &[&str]) -> std::process::Output {
        std::process::Command::new(&self.exe)
            .args(args)
            .arg("--admin")
            .arg(self.admin(via).to_string())
            .arg("--token-file")
            .arg(self.lab.data.join("admin.token"))
            .output()
            .expect("run the CLI")
    }

    /// `pool status pool1` as server `via` answers it.
    pub fn status(&self, via: &str) -> serde_json::Value {
        let (code, body) = self.call(via, "GET", "/api/v1/pools/pool1/status");
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits (up to 60 s) until the pool status seen from `via` satisfies `pred`.
    pub fn wait_status(
        &self,
        via: &str,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let (code, body) = self.call(via, "GET", "/api/v1/pools/pool1/status");
            if code == 200 && pred(&body) {
                return body;
            }
            assert!(Instant::now() < end, "no {what} within 60 s: {body}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of a server (its restarted process, if it was started again).
    pub fn pid(&self, name: &str) -> i32 {
        if let Some(s) = self
            .restarted
            .lock()
            .ok()
            .and_then(|r| r.iter().find(|s| s.name == name).map(LabServer::pid))
        {
            return s as i32;
        }
        self.server(name)["pid"]
            .as_i64()
            .unwrap_or_else(|| panic!("no pid for {name}")) as i32
    }

    pub fn signal(&self, name: &str, sig: Signal) {
        kill(Pid::from_raw(self.pid(name)), sig).expect("signal a server");
    }

    /// Waits (up to 30 s) until a server's process has exited.
    pub fn wait_exit(&self, name: &str) {
        let pid = self.pid(name) as u32;
        let end = Instant::now() + Duration::from_secs(30);
        while crate::alive(pid) {
            assert!(Instant::now() < end, "{name} did not exit within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts a killed server again on its data.
    pub fn restart(&self, name: &str) {
        let server = LabServer::start(&self.exe, &self.topology, &self.lab.data, name)
            .unwrap_or_else(|log| panic!("{name} did not start again: {log}"));
        if let Ok(mut r) = self.restarted.lock() {
            r.retain(|s| s.name != name);
            r.push(server);
        }
    }

    /// The contacts bound to `user`, as server `via` reads them from the user's group.
    pub fn contacts(&self, via: &str, user: &str) -> Vec<String> {
        let (code, body) = self.call(via, "GET", &format!("/api/v1/registrations/{user}"));
        assert_eq!(code, 200, "{body}");
        crate::contacts_of(&body)
    }

    /// `user`'s presence as server `via` reads it from the user's group: the entity tags of
    /// its publications and the Call-IDs of the subscriptions to it.
    pub fn presence(&self, via: &str, user: &str) -> (Vec<String>, Vec<String>) {
        let (code, body) = self.call(via, "GET", &format!("/api/v1/presence/{user}"));
        assert_eq!(code, 200, "{body}");
        let list = |key: &str, field: &str| -> Vec<String> {
            body[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p[field].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        (list("publications", "etag"), list("watchers", "call_id"))
    }
}

/// What one client request of a [`PoolLoad`] was and how it ended.
#[derive(Debug, Clone)]
pub struct Op {
    pub user: String,
    /// The user whose data the change is: the user itself, or the one it subscribed to.
    pub target: String,
    /// `REGISTER`, `PUBLISH` or `SUBSCRIBE`.
    pub method: &'static str,
    pub server: SocketAddr,
    /// The final status; 0 when no answer came in time.
    pub status: u16,
    /// What the change left to check: the contact, the entity tag, the Call-ID.
    pub key: String,
    pub sent: Instant,
    pub done: Instant,
}

/// Client load on a pool: each client takes the next user of `user0001…` and registers it,
/// publishes its presence and subscribes to the previous user's, over UDP. A request that gets
/// no answer within 3 s, or any failure, is sent again with a new socket to the next server of
/// the list — what a client with several registrar addresses does. NOTIFYs go to one socket
/// that answers each with 200, so no subscription ends for want of a watcher.
pub struct PoolLoad {
    /// Which servers the clients use, when a dispatcher chooses for them (see
    /// [`PoolLoad::start_dispatched`]).
    pub live: Arc<Mutex<Vec<bool>>>,
    stop: Arc<AtomicBool>,
    handles: Vec<std::thread::JoinHandle<()>>,
    pub ops: Arc<Mutex<Vec<Op>>>,
    /// NOTIFYs the watchers' socket received.
    pub notifies: Arc<AtomicUsize>,
}

impl PoolLoad {
    /// `threads` clients over `servers` (client `i` starts at server `i mod n`), users
    /// `user0001`… up to `users`, password "pw".
    pub fn start(servers: Vec<SocketAddr>, threads: usize, users: usize) -> PoolLoad {
        PoolLoad::run(servers, threads, users, false)
    }

    /// [`PoolLoad::start`], with the clients sent only to the servers a dispatcher finds
    /// serving: it sends OPTIONS to each every 100 ms and takes out one that answers other
    /// than 200 within 300 ms — as SIP load balancers (Kamailio's dispatcher) do.
    pub fn start_dispatched(servers: Vec<SocketAddr>, threads: usize, users: usize) -> PoolLoad {
        PoolLoad::run(servers, threads, users, true)
    }

    /// Whether the dispatcher sends clients to server `i` now.
    pub fn is_live(&self, i: usize) -> bool {
        self.live
            .lock()
            .map(|l| l.get(i).copied().unwrap_or(false))
            .unwrap_or(false)
    }

    fn run(servers: Vec<SocketAddr>, threads: usize, users: usize, dispatch: bool) -> PoolLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(vec![true; servers.len()]));
        let next = Arc::new(AtomicUsize::new(1));
        let ops = Arc::new(Mutex::new(Vec::new()));
        let notifies = Arc::new(AtomicUsize::new(0));
        let sink = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind the watchers' socket");
        let sink_contact = format!(
            "sip:watchers@{}",
            sink.local_addr().expect("the watchers' address")
        );
        let mut handles = vec![{
            let (stop, notifies) = (stop.clone(), notifies.clone());
            std::thread::spawn(move || answer_notifies(&sink, &stop, &notifies))
        }];
        if dispatch {
            let (stop, live, servers) = (stop.clone(), live.clone(), servers.clone());
            handles.push(std::thread::spawn(move || probe(&servers, &live, &stop)));
        }
        handles.extend((0..threads).map(|t| {
            let (stop, next, ops, servers, sink_contact, live) = (
                stop.clone(),
                next.clone(),
                ops.clone(),
                servers.clone(),
                sink_contact.clone(),
                live.clone(),
            );
            std::thread::spawn(move || {
                let mut at = t % servers.len();
                while !stop.load(Ordering::Relaxed) {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i > users {
                        return;
                    }
                    let user = format!("user{i:04}");
                    let watched = format!("user{:04}", if i > 1 { i - 1 } else { users });
                    for method in ["REGISTER", "PUBLISH", "SUBSCRIBE"] {
                        // Each request tries every server once at most.
                        for _ in 0..servers.len() {
                            if stop.load(Ordering::Relaxed) {
                                return;
                            }
                            if dispatch {
                                at = next_live(&live, at);
                            }
                            let server = servers[at];
                            let op = one_op(server, &user, &watched, &sink_contact, method);
                            let ok = op.status == 200;
                            if let Ok(mut o) = ops.lock() {
                                o.push(op);
                            }
                            if ok {
                                break;
                            }
                            at = (at + 1) % servers.len();
                        }
                    }
                }
            })
        }));
        PoolLoad {
            live,
            stop,
            handles,
            ops,
            notifies,
        }
    }

    /// Requests answered (or given up on) so far.
    pub fn done(&self) -> usize {
        self.ops.lock().map(|o| o.len()).unwrap_or(0)
    }

    /// Waits until at least `n` requests were done (or `timeout`).
    pub fn wait_for(&self, n: usize, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.done() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Stops the clients and returns every request's record.
    pub fn stop(self) -> Vec<Op> {
        self.stop.store(true, Ordering::Relaxed);
        for h in self.handles {
            let _ = h.join();
        }
        self.ops.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

/// The first server from `at` on that the dispatcher finds serving (`at` if none is).
fn next_live(live: &Mutex<Vec<bool>>, at: usize) -> usize {
    let Ok(live) = live.lock() else {
        return at;
    };
    (0..live.len())
        .map(|k| (at + k) % live.len())
        .find(|&i| live[i])
        .unwrap_or(at)
}

/// The dispatcher: OPTIONS to every server every 100 ms.
fn probe(servers: &[SocketAddr], live: &Mutex<Vec<bool>>, stop: &AtomicBool) {
    let mut uas: Vec<Ua> = servers
        .iter()
        .map(|s| Ua::udp(*s, "dispatcher", "-", DOMAIN))
        .collect();
    while !stop.load(Ordering::Relaxed) {
        for (i, ua) in uas.iter_mut().enumerate() {
            let target = format!("sip:{}", ua.server);
            let req = ua.build(
                sip::Method::Options,
                &target,
                &target,
                &format!("{}@probe", crate::ua::random_hex(8)),
            );
            let ok = ua
                .transact_within(&req, Duration::from_millis(300))
                .is_some_and(|r| r.status == 200);
            if let Ok(mut l) = live.lock() {
                l[i] = ok;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Answers every request that reaches the watchers' socket with 200, until stopped.
fn answer_notifies(sink: &std::net::UdpSocket, stop: &AtomicBool, count: &AtomicUsize) {
    let _ = sink.set_read_timeout(Some(Duration::from_millis(100)));
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sink.recv_from(&mut buf) else {
            continue;
        };
        if let Ok(sip::Message::Request(req)) =
            sip::parse_message(&buf[..n], &sip::Limits::default())
        {
            count.fetch_add(1, Ordering::Relaxed);
            let _ = sink.send_to(&req.response(200, Some("sink")).to_bytes(), from);
        }
    }
}

fn one_op(
    server: SocketAddr,
    user: &str,
    watched: &str,
    sink_contact: &str,
    method: &'static str,
) -> Op {
    let mut ua = Ua::udp(server, user, "pw", DOMAIN);
    let sent = Instant::now();
    let limit = Duration::from_secs(3);
    let (resp, key) = match method {
        "REGISTER" => {
            let contact = ua.contact();
            (ua.try_register(3600, limit), contact)
        }
        "PUBLISH" => {
            let resp = ua.try_publish(Some("pool load"), 3600, limit);
            let etag = resp
                .as_ref()
                .and_then(|r| r.headers.get("SIP-ETag").map(str::to_string))
                .unwrap_or_default();
            (resp, etag)
        }
        _ => {
            let call_id = format!("{}@load", crate::ua::random_hex(8));
            (
                ua.try_subscribe(watched, &call_id, sink_contact, 3600, limit),
                call_id,
            )
        }
    };
    Op {
        user: user.to_string(),
        target: if method == "SUBSCRIBE" { watched } else { user }.to_string(),
        method,
        server,
        status: resp.map_or(0, |r| r.status),
        key,
        sent,
        done: Instant::now(),
    }
}

/// Acknowledged changes of a load that a pool no longer holds, read through server `via`.
pub fn lost(pool: &PoolLab, via: &str, ops: &[Op]) -> Vec<String> {
    let mut lost = Vec::new();
    for op in ops.iter().filter(|o| o.status == 200) {
        let held = match op.method {
            "REGISTER" => pool
                .contacts(via, &op.user)
                .iter()
                .any(|c| c.split(';').next() == op.key.split(';').next()),
            "PUBLISH" => pool.presence(via, &op.target).0.contains(&op.key),
            _ => pool.presence(via, &op.target).1.contains(&op.key),
        };
        if !held {
            lost.push(format!("{} {} ({})", op.method, op.user, op.key));
        }
    }
    lost
}
