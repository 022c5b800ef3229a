//! Failure injection: cut this process off from named peers, for partition tests.
//!
//! The switch is process-wide (one server process = one node in process tests, where an admin
//! command flips it). While a peer is blocked:
//! - calls from this process to it fail at once with [`RpcError::Disconnected`](crate::RpcError),
//!   and a connection that turns out to lead to it is dropped during the handshake;
//! - connections from it are dropped once its hello names it;
//! - connections that already exist, either way, are closed as soon as it is blocked (their
//!   calls in flight fail with `Disconnected`).
//!
//! Peers are named by their node name (the `node_name` of their config). Unblocking lets the
//! next call reconnect. It is real traffic that stops, not a mock: the sockets are closed.
//! In-process tests share the switch, so each test blocks names no other test uses.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{LazyLock, Mutex};

use tokio::sync::watch;

struct Faults {
    /// Blocked peer names. Changed only by the functions below.
    blocked: Mutex<HashSet<String>>,
    /// True while `blocked` is non-empty: a lock-free fast path for every call.
    any: AtomicBool,
    /// Bumped on every change, so open connections re-check their peer.
    changed: watch::Sender<u64>,
}

static FAULTS: LazyLock<Faults> = LazyLock::new(|| Faults {
    blocked: Mutex::new(HashSet::new()),
    any: AtomicBool::new(false),
    changed: watch::Sender::new(0),
});

fn update(f: impl FnOnce(&mut HashSet<String>)) {
    {
        let mut set = FAULTS.blocked.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut set);
        FAULTS.any.store(!set.is_empty(), Ordering::SeqCst);
    }
    FAULTS.changed.send_modify(|n| *n = n.wrapping_add(1));
}

/// Blocks all traffic to and from the peer named `peer`.
pub fn block(peer: &str) {
    tracing::warn!(peer, "rpc fault injection: blocking peer");
    update(|s| {
        s.insert(peer.to_string());
    });
}

/// Lets traffic to and from `peer` flow again.
pub fn unblock(peer: &str) {
    tracing::warn!(peer, "rpc fault injection: unblocking peer");
    update(|s| {
        s.remove(peer);
    });
}

/// Unblocks every peer.
pub fn clear() {
    update(HashSet::clear);
}

/// True when `peer` is blocked.
pub fn is_blocked(peer: &str) -> bool {
    if !FAULTS.any.load(Ordering::SeqCst) {
        return false;
    }
    FAULTS
        .blocked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains(peer)
}

/// The blocked peers, sorted.
pub fn blocked() -> Vec<String> {
    let mut v: Vec<String> = FAULTS
        .blocked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    v.sort();
    v
}

/// A receiver that changes whenever the blocked set does.
pub(crate) fn subscribe() -> watch::Receiver<u64> {
    FAULTS.changed.subscribe()
}
