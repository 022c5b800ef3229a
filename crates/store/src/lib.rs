//! Tandem's back-end store: the replicated database of a pool (DESIGN.md §2, "Store").
//!
//! - `model`: what commands carry and queries return.
//! - `machine`: the SQL state machine (schema, deterministic `apply`, queries).
//! - `local`: the engine for a `standalone` store, durable with group commit.
//!
//! Callers use [`Store`], which hides which engine serves it; the replicated engines of the
//! other HA modes plug in behind the same calls.

pub mod local;
pub mod machine;
pub mod model;

pub use local::{LocalStore, Options};
pub use machine::StoreError;
pub use model::*;

use std::path::Path;

/// A handle on a store, whatever its HA mode; cheap to clone.
#[derive(Clone)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone)]
enum Engine {
    Local(LocalStore),
}

impl Store {
    /// Opens a standalone store whose database lives at `path`.
    pub fn open_local(path: &Path, options: Options) -> Result<Store, StoreError> {
        Ok(Store {
            engine: Engine::Local(LocalStore::open(path, options)?),
        })
    }

    /// Applies a command; returns once it is durable (or refused, having changed nothing).
    pub async fn apply(&self, cmd: Command) -> Result<Applied, StoreError> {
        match &self.engine {
            Engine::Local(s) => s.apply(cmd).await,
        }
    }

    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError> + Send + 'static,
    {
        match &self.engine {
            Engine::Local(s) => s.read(f).await,
        }
    }

    /// A user and its credentials.
    pub async fn user(&self, aor: &str) -> Result<Option<User>, StoreError> {
        let aor = aor.to_string();
        self.read(move |c| machine::user(c, &aor)).await
    }

    /// Every user.
    pub async fn users(&self, now_ms: u64) -> Result<Vec<UserSummary>, StoreError> {
        self.read(move |c| machine::users(c, now_ms)).await
    }

    /// The unexpired bindings of an AOR.
    pub async fn bindings(&self, aor: &str, now_ms: u64) -> Result<Vec<Binding>, StoreError> {
        let aor = aor.to_string();
        self.read(move |c| machine::bindings(c, &aor, now_ms)).await
    }

    /// A presentity's state.
    pub async fn presence(&self, aor: &str, now_ms: u64) -> Result<Presence, StoreError> {
        let aor = aor.to_string();
        self.read(move |c| machine::presence(c, &aor, now_ms)).await
    }

    /// The subscription of a dialog.
    pub async fn subscription_by_dialog(
        &self,
        call_id: &str,
        watcher_tag: &str,
        local_tag: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let (a, b, c) = (
            call_id.to_string(),
            watcher_tag.to_string(),
            local_tag.to_string(),
        );
        self.read(move |conn| machine::subscription_by_dialog(conn, &a, &b, &c))
            .await
    }

    /// The earliest expiry of anything in the store.
    pub async fn next_expiry(&self) -> Result<Option<u64>, StoreError> {
        self.read(machine::next_expiry).await
    }

    /// Engine counters: (commits, applied, refused, failed).
    pub fn counters(&self) -> (u64, u64, u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        match &self.engine {
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
