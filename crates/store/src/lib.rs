//! Tandem's back-end store: the replicated database of a pool (DESIGN.md §2, "Store").
//!
//! - `model`: what commands carry and queries return.
//! - `machine`: the SQL state machine (schema, deterministic `apply`, queries).
//! - `local`: the engine for a `standalone` store, durable with group commit.
//!
//! Callers use [`Store`], which hides which engine serves it; the replicated engines of the
//! other HA modes plug in behind the same calls.

pub mod backup;
pub mod client;
pub mod cluster;
pub mod listener;
pub mod local;
pub mod logship;
pub mod machine;
pub mod model;
pub mod node;
pub mod pool;
pub mod proto;
pub mod replicated;
pub mod sqlite;
pub mod witness;

pub use local::{LocalStore, Options};
pub use machine::StoreError;
pub use model::*;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// A handle on a store, whatever its HA mode; cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
    users: Arc<UserCache>,
}

/// Users read through `Store::user` (every authenticated request needs one), kept until a
/// command through this handle changes them, or (for a store other servers also write) for
/// `max_age` at most: each entry for a random part of it between a half and the whole, so
/// that the users read in the same moment (a server's first seconds under load) are not all
/// read again in the same moment, a wave of queries at the store's primary every `max_age`.
#[derive(Default)]
struct UserCache {
    /// Each user with the moment it must be read again (`None`: until changed).
    map: RwLock<HashMap<String, (User, Option<std::time::Instant>)>>,
    max_age: Option<std::time::Duration>,
    /// Bumped by every change to users; a read that raced with a change is not cached.
    generation: AtomicU64,
}

/// Most users kept in the cache.
const USER_CACHE_MAX: usize = 1_000_000;

/// A number in [0, 1), different at each call: the standard library's randomly keyed hasher
/// over a counter (spreading cache expiries needs no better).
fn random_fraction() -> f64 {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<std::collections::hash_map::RandomState> =
        std::sync::OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    (KEYS.get_or_init(Default::default).hash_one(n) >> 11) as f64 / (1u64 << 53) as f64
}

impl UserCache {
    fn get(&self, aor: &str) -> Option<User> {
        let map = self.map.read().ok()?;
        let (user, until) = map.get(aor)?;
        if until.is_some_and(|t| std::time::Instant::now() >= t) {
            return None;
        }
        Some(user.clone())
    }

    fn insert_if_current(&self, user: &User, generation: u64) {
        if let Ok(mut map) = self.map.write()
            && self.generation.load(Ordering::Acquire) == generation
            && map.len() < USER_CACHE_MAX
        {
            let until = self
                .max_age
                .map(|max| std::time::Instant::now() + max.mul_f64(1.0 - random_fraction() / 2.0));
            map.insert(user.aor.clone(), (user.clone(), until));
        }
    }

    fn invalidate(&self, aor: &str) {
        if let Ok(mut map) = self.map.write() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            map.remove(aor);
        }
    }
}

#[derive(Clone)]
enum Engine {
    Local(LocalStore),
    /// A replicated store, reached through its listener.
    Remote(client::StoreClient),
    /// A log-shipping secondary: no service until the link is failed over to it, then the
    /// store it brought online.
    Standby(Arc<logship::Secondary>),
}

impl Store {
    /// Opens a standalone store whose database lives at `path`.
    pub fn open_local(path: &Path, options: Options) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::Local(LocalStore::open(path, options)?),
            users: Arc::default(),
        })
    }

    /// A replicated store reached through `client`. Users read here are trusted for 10 s at
    /// most, since other servers may change them.
    pub fn remote(client: client::StoreClient) -> Store {
        Store {
            engine: Engine::Remote(client),
            users: Arc::new(UserCache {
                max_age: Some(std::time::Duration::from_secs(10)),
                ..UserCache::default()
            }),
        }
    }

    /// The store of a log-shipping secondary, for a front end at the secondary's site: every
    /// request is refused until the link is failed over to it, then served by it. Users read
    /// here are trusted for 10 s at most, like a remote store's.
    pub fn standby(secondary: Arc<logship::Secondary>) -> Store {
        Store {
            engine: Engine::Standby(secondary),
            users: Arc::new(UserCache {
                max_age: Some(std::time::Duration::from_secs(10)),
                ..UserCache::default()
            }),
        }
    }

    /// Applies a command; returns once it is durable (or refused, having changed nothing).
    pub async fn apply(&self, cmd: Command) -> Result<Applied, StoreError> {
        let changes_user = match &cmd {
            Command::AddUser { user } => Some(user.aor.clone()),
            Command::SetPassword { aor, .. } | Command::RemoveUser { aor, .. } => Some(aor.clone()),
            _ => None,
        };
        let result = match &self.engine {
            Engine::Local(s) => s.apply(cmd).await,
            Engine::Remote(c) => c.apply(cmd).await,
            Engine::Standby(sec) => match sec.online() {
                Ok(store) => Box::pin(store.apply(cmd)).await,
                Err(e) => Err(e),
            },
        };
        if let Some(aor) = changes_user {
            self.users.invalidate(&aor);
        }
        result
    }

    /// Forgets a cached user: another server changed it (the next request reads it again).
    pub fn forget_user(&self, aor: &str) {
        self.users.invalidate(aor);
    }

    /// Runs a query on the engine.
    pub async fn query(&self, q: Query) -> Result<QueryResult, StoreError> {
        match &self.engine {
            Engine::Local(s) => s.query(q).await,
            Engine::Remote(c) => c
                .query(q, proto::Consistency::Primary)
                .await
                .map(|a| a.result),
            Engine::Standby(sec) => Box::pin(sec.online()?.query(q)).await,
        }
    }

    /// A user and its credentials.
    pub async fn user(&self, aor: &str) -> Result<Option<User>, StoreError> {
        if let Some(user) = self.users.get(aor) {
            return Ok(Some(user));
        }
        let generation = self.users.generation.load(Ordering::Acquire);
        let user = match self
            .query(Query::User {
                aor: aor.to_string(),
            })
            .await?
        {
            QueryResult::User(u) => u,
            other => return Err(unexpected(&other)),
        };
        if let Some(u) = &user {
            self.users.insert_if_current(u, generation);
        }
        Ok(user)
    }

    /// Every user.
    pub async fn users(&self, now_ms: u64) -> Result<Vec<UserSummary>, StoreError> {
        match self.query(Query::Users { now_ms }).await? {
            QueryResult::Users(u) => Ok(u),
            other => Err(unexpected(&other)),
        }
    }

    /// The unexpired bindings of an AOR.
    pub async fn bindings(&self, aor: &str, now_ms: u64) -> Result<Vec<Binding>, StoreError> {
        match self
            .query(Query::Bindings {
                aor: aor.to_string(),
                now_ms,
            })
            .await?
        {
            QueryResult::Bindings(b) => Ok(b),
            other => Err(unexpected(&other)),
        }
    }

    /// A presentity's state.
    pub async fn presence(&self, aor: &str, now_ms: u64) -> Result<Presence, StoreError> {
        match self
            .query(Query::Presence {
                aor: aor.to_string(),
                now_ms,
            })
            .await?
        {
            QueryResult::Presence(p) => Ok(p),
            other => Err(unexpected(&other)),
        }
    }

    /// The subscriptions to a presentity.
    pub async fn watchers(&self, aor: &str) -> Result<Vec<Subscription>, StoreError> {
        match self
            .query(Query::Watchers {
                aor: aor.to_string(),
            })
            .await?
        {
            QueryResult::Subscriptions(s) => Ok(s),
            other => Err(unexpected(&other)),
        }
    }

    /// The subscription of a dialog.
    pub async fn subscription_by_dialog(
        &self,
        call_id: &str,
        watcher_tag: &str,
        local_tag: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let q = Query::SubscriptionByDialog {
            call_id: call_id.to_string(),
            watcher_tag: watcher_tag.to_string(),
            local_tag: local_tag.to_string(),
        };
        match self.query(q).await? {
            QueryResult::Subscription(s) => Ok(s.map(|b| *b)),
            other => Err(unexpected(&other)),
        }
    }

    /// The earliest expiry of anything in the store.
    pub async fn next_expiry(&self) -> Result<Option<u64>, StoreError> {
        match self.query(Query::NextExpiry).await? {
            QueryResult::NextExpiry(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    /// Engine counters: (commits, applied, refused, failed).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        use Ordering::Relaxed;
        match &self.engine {
            Engine::Remote(_) => (0, 0, 0, 0),
            Engine::Standby(sec) => sec.promoted().map_or((0, 0, 0, 0), |s| s.counters()),
            Engine::Local(s) => {
                let st = s.stats();
                (
                    st.commits.load(Relaxed),
                    st.applied.load(Relaxed),
                    st.refused.load(Relaxed),
                    st.failed.load(Relaxed),
                )
            }
        }
    }
}

/// A query answered with the wrong kind of result: a bug or a peer of another version.
fn unexpected(result: &QueryResult) -> StoreError {
    StoreError::Storage(format!("unexpected query result {result:?}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report
    use super::*;
    use std::time::{Duration, Instant};

    /// Users read in the same moment are read again spread over the second half of the
    /// cache's age limit, not all at once: a store's primary sees a trickle of reads instead
    /// of a wave every 10 s.
    #[test]
    fn cached_users_expire_spread_over_the_second_half_of_max_age() {
        let max = Duration::from_secs(10);
        let cache = UserCache {
            max_age: Some(max),
            ..UserCache::default()
        };
        let before = Instant::now();
        for i in 0..1000 {
            let user = User {
                aor: format!("sip:u{i}@example.com"),
                username: format!("u{i}"),
                realm: "example.com".into(),
                ha1_md5: String::new(),
                ha1_sha256: String::new(),
                created_ms: 0,
            };
            cache.insert_if_current(&user, 0);
        }
        let after = Instant::now();
        let map = cache.map.read().unwrap();
        let untils: Vec<Instant> = map.values().map(|(_, u)| u.unwrap()).collect();
        assert_eq!(untils.len(), 1000);
        assert!(
            untils
                .iter()
                .all(|u| *u >= before + max / 2 && *u <= after + max)
        );
        let (first, last) = (untils.iter().min().unwrap(), untils.iter().max().unwrap());
        assert!(
            *last - *first > Duration::from_secs(4),
            "spread over {:?}",
            *last - *first
        );
        // Every one is served from the cache until then.
        assert!(cache.get("sip:u7@example.com").is_some());
    }
}
