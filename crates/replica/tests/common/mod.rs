//! Test fixtures: a key-value machine and an in-process transport with partitions.

#![allow(dead_code)]

use replica::{BoxFuture, Machine, Member, Replica, ReplicaConfig, Transport};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A command of the test machine: set a key; the response is the previous value.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Set {
    pub key: String,
    pub value: String,
}

/// The test machine: a map, and the position stored with it (as a real machine must).
#[derive(Default, Clone, Serialize, Deserialize)]
pub struct Kv {
    pub map: BTreeMap<String, String>,
    pub position: Option<Vec<u8>>,
}

impl Machine for Kv {
    fn apply(&mut self, commands: &[Option<&[u8]>], position: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        for c in commands {
            match c {
                Some(bytes) => {
                    let set: Set = serde_json::from_slice(bytes).map_err(io::Error::other)?;
                    let prev = self.map.insert(set.key, set.value);
                    out.push(serde_json::to_vec(&prev).map_err(io::Error::other)?);
                }
                None => out.push(Vec::new()),
            }
        }
        self.position = Some(position.to_vec());
        Ok(out)
    }
    fn position(&mut self) -> io::Result<Option<Vec<u8>>> {
        Ok(self.position.clone())
    }
    fn snapshot(&mut self) -> io::Result<Vec<u8>> {
        serde_json::to_vec(self).map_err(io::Error::other)
    }
    fn install(&mut self, snapshot: &[u8]) -> io::Result<()> {
        *self = serde_json::from_slice(snapshot).map_err(io::Error::other)?;
        Ok(())
    }
}

/// An in-process transport: members by server name; links can be cut; messages may be
/// limited in size, as a real transport's frames are.
#[derive(Clone, Default)]
pub struct Router {
    members: Arc<Mutex<BTreeMap<String, Replica<Kv>>>>,
    cut: Arc<Mutex<BTreeSet<String>>>,
    /// The largest message delivered; 0 for no limit.
    max_message: Arc<AtomicUsize>,
    /// Messages delivered, by kind: how many, how many bytes.
    delivered: Arc<Mutex<BTreeMap<String, (usize, usize)>>>,
}

impl Router {
    pub fn add(&self, r: Replica<Kv>) {
        self.members
            .lock()
            .unwrap()
            .insert(r.config().me.server.clone(), r);
    }
    pub fn remove(&self, server: &str) -> Option<Replica<Kv>> {
        self.members.lock().unwrap().remove(server)
    }
    pub fn get(&self, server: &str) -> Option<Replica<Kv>> {
        self.members.lock().unwrap().get(server).cloned()
    }
    /// Cuts every link to and from `server`.
    pub fn isolate(&self, server: &str) {
        self.cut.lock().unwrap().insert(server.to_string());
    }
    pub fn heal(&self) {
        self.cut.lock().unwrap().clear();
    }
    /// Refuses messages larger than `bytes`, as a transport with a frame limit does.
    pub fn limit_messages(&self, bytes: usize) {
        self.max_message.store(bytes, Ordering::Relaxed);
    }
    /// How many messages of `kind` were delivered, and their bytes.
    pub fn delivered(&self, kind: &str) -> (usize, usize) {
        self.delivered
            .lock()
            .unwrap()
            .get(kind)
            .copied()
            .unwrap_or_default()
    }
}

pub struct RouterTransport {
    pub router: Router,
    pub from: String,
}

impl Transport for RouterTransport {
    fn call(
        &self,
        to: &Member,
        service: String,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<Result<Vec<u8>, String>> {
        let router = self.router.clone();
        let from = self.from.clone();
        let to = to.server.clone();
        Box::pin(async move {
            let blocked = {
                let cut = router.cut.lock().unwrap();
                cut.contains(&from) || cut.contains(&to)
            };
            if blocked {
                return Err(format!("link {from} -> {to} cut"));
            }
            let Some(target) = router.get(&to) else {
                return Err(format!("{to} is down"));
            };
            let kind = service.rsplit('/').next().unwrap_or("").to_string();
            let max = router.max_message.load(Ordering::Relaxed);
            if max > 0 && body.len() > max {
                return Err(format!(
                    "a message of {} bytes is over the {max}-byte limit",
                    body.len()
                ));
            }
            {
                let mut delivered = router.delivered.lock().unwrap();
                let d = delivered.entry(kind.clone()).or_default();
                d.0 += 1;
                d.1 += body.len();
            }
            match tokio::time::timeout(timeout, target.handle(&kind, &body)).await {
                Ok(r) => r,
                Err(_) => Err("timeout".into()),
            }
        })
    }
}

pub fn member(server: &str) -> Member {
    Member {
        server: server.into(),
        addr: format!("{server}:7000"),
    }
}

pub async fn start(router: &Router, server: &str, dir: &Path, elect: bool) -> Replica<Kv> {
    start_configured(router, server, dir, elect, |_| {}).await
}

/// Like [`start`], with the configuration changed by `tweak` first.
pub async fn start_configured(
    router: &Router,
    server: &str,
    dir: &Path,
    elect: bool,
    tweak: impl FnOnce(&mut ReplicaConfig),
) -> Replica<Kv> {
    let mut cfg = ReplicaConfig::new("kv", member(server), dir.join(server));
    cfg.elect = elect;
    cfg.heartbeat_ms = 50;
    cfg.election_timeout_min_ms = 200;
    cfg.election_timeout_max_ms = 400;
    cfg.blocking_machine = false;
    cfg.snapshot_every = 50;
    tweak(&mut cfg);
    let transport = Arc::new(RouterTransport {
        router: router.clone(),
        from: server.into(),
    });
    let r = Replica::open(cfg, Kv::default(), transport).await.unwrap();
    router.add(r.clone());
    r
}

pub fn set(key: &str, value: &str) -> Vec<u8> {
    serde_json::to_vec(&Set {
        key: key.into(),
        value: value.into(),
    })
    .unwrap()
}

/// A directory of its own for one test, removed when the test is done with it.
pub fn tmp(name: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(&format!("tandem-replica-{name}-"))
        .tempdir()
        .unwrap()
}

/// Writes through whichever member leads, following redirects, until `deadline`.
pub async fn write_anywhere(
    router: &Router,
    servers: &[&str],
    cmd: Vec<u8>,
    deadline: Duration,
) -> Vec<u8> {
    let end = tokio::time::Instant::now() + deadline;
    loop {
        for s in servers {
            if let Some(r) = router.get(s)
                && r.status().role == replica::Role::Leader
                && let Ok(resp) = r.write(cmd.clone()).await
            {
                return resp;
            }
        }
        assert!(
            tokio::time::Instant::now() < end,
            "no leader accepted the write"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
