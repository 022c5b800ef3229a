//! Log shipping, the secondary's side: the copy job brings new backups from the share into
//! the secondary's own copy folder, and the restore job applies them to the secondary's
//! database after the configured delay; the database stays read-only (standby) between
//! restores. The state of both jobs is kept in a file beside the copy folder, so they resume
//! where they stopped after a restart, and [`Secondary::status`] reports it with the lag and
//! the alerts of the classic log-shipping monitor.
//!
//! The copy folder has the share's layout (`<store>/full`, `<store>/log`), so the backup
//! module's functions read it as they read the share.
//!
//! Which end of a link is the primary is kept on the share, which both sites see
//! (`<share>/<link>.roles.json`, [`Roles`]): a failover makes the secondary the primary and
//! fences the old primary (it refuses to serve, and a running one closes its writes); a
//! reversal ships the new primary's log back to the old one, reseeded; a planned failover
//! (a hand-over, [`Handover`]) has the primary close its writes and take the last log backup
//! before the secondary comes online, so failing back loses nothing.

use crate::backup::{self, Target};
use crate::machine::{self, StoreError};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How a secondary is set up (from the topology's log-shipping link).
#[derive(Debug, Clone)]
pub struct SecondaryConfig {
    /// The link's name.
    pub link: String,
    /// The primary store, whose backups the share holds.
    pub primary: String,
    /// The secondary store.
    pub secondary: String,
    pub share: PathBuf,
    /// The secondary's copy folder.
    pub copy_dir: PathBuf,
    /// The secondary's database.
    pub db: PathBuf,
    pub copy_interval: Duration,
    pub restore_interval: Duration,
    pub restore_delay: Duration,
    pub backup_alert: Duration,
    pub restore_alert: Duration,
    /// How long copied backups are kept (beyond what is not restored yet).
    pub retention: Duration,
    /// "standby" or "no-recovery".
    pub mode: String,
}

/// The jobs' state, kept in `<copy_dir>/state.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobState {
    pub last_copy_ms: u64,
    /// The newest LSN in the copy folder.
    pub last_copied_lsn: u64,
    pub last_restore_ms: u64,
    pub last_restored_lsn: u64,
    /// When the last restored command was applied on the primary (unix ms).
    pub last_restored_commit_ms: u64,
    /// What stopped the last copy or restore, naming the file and the position.
    pub error: Option<String>,
    /// The primary store these jobs restore from: when the link's roles name another one,
    /// the database is set aside and reseeded.
    #[serde(default)]
    pub source: String,
    /// The database holds every command the primary applied up to this time (unix ms): the
    /// last restore's target, or the newest backup copied before it if that is older.
    #[serde(default)]
    pub complete_until_ms: u64,
}

/// `tandem logship status`: one link as its secondary (or its primary) sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// "secondary": the copy and restore side; "primary": the backup side.
    pub side: String,
    pub link: String,
    pub primary: String,
    pub secondary: String,
    pub mode: String,
    /// "shipping", or "failed-over" from a failover until the roles are reversed.
    pub state: String,
    /// How many times the link's roles changed (failovers and reversals).
    pub epoch: u64,
    /// The newest backup on the share (log or full): its last LSN and when it was taken.
    pub last_backup_lsn: u64,
    pub last_backup_ms: u64,
    /// The copy and restore jobs (null on the primary's side).
    pub last_copied_lsn: Option<u64>,
    pub last_copy_ms: Option<u64>,
    pub last_restored_lsn: Option<u64>,
    pub last_restore_ms: Option<u64>,
    /// On the secondary: commands on the share not yet restored here. On the primary:
    /// commands not yet on the share — what losing the primary's site without a tail-log
    /// backup would lose now.
    pub lag_tx: u64,
    /// Seconds since the oldest of those commands was applied on the primary (0 when there
    /// is none).
    pub lag_s: f64,
    /// On the primary: its LSN now.
    pub primary_lsn: Option<u64>,
    /// On a standby secondary: it holds everything the primary applied up to this time
    /// (unix ms), which is what a read on it sees (null elsewhere, and before the first restore).
    pub complete_until_ms: Option<u64>,
    pub alert: bool,
    /// Why, when `alert`.
    pub alerts: Vec<String>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A running secondary.
pub struct Secondary {
    cfg: SecondaryConfig,
    state: Mutex<JobState>,
    /// When the jobs started (unix ms): a link with nothing yet alerts only once a threshold
    /// has passed since.
    started_ms: u64,
    /// Held by a copy, a restore or the failover: one at a time.
    job: Mutex<()>,
    /// After a failover: the secondary as a writable store.
    promoted: OnceLock<crate::Store>,
    /// For a replicated secondary (an availability group reseeded after a reversal): opens
    /// this server's replica once the link fails over to it.
    opener: Option<NodeOpener>,
    /// That replica, once open.
    node: OnceLock<Arc<crate::node::StoreNode>>,
    /// Held while the replica is being opened.
    opening: tokio::sync::Mutex<()>,
}

/// Opens this server's replica of a replicated store, on the database in place.
pub type NodeOpener = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<
                dyn std::future::Future<Output = Result<Arc<crate::node::StoreNode>, String>>
                    + Send,
            >,
        > + Send
        + Sync,
>;

/// What `tandem logship failover` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverReport {
    pub link: String,
    pub primary: String,
    pub secondary: String,
    /// The tail-log backup: what it held, or why there was none.
    pub tail: String,
    pub tail_taken: bool,
    /// The last command restored: the secondary's state is the primary's after it.
    pub last_lsn: u64,
    pub last_commit_ms: Option<u64>,
    /// Why the restore stopped before the end of what the share holds (a bad file), if it did.
    pub stopped: Option<String>,
}

/// A failover of a link, as its roles keep it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedOver {
    /// The store failed over (it must not write again until it is reseeded).
    pub from: String,
    /// The store brought online.
    pub to: String,
    /// The last command `to` restored.
    pub lsn: u64,
    pub at_ms: u64,
    /// A hand-over: `from` closed its writes and shipped everything first.
    pub planned: bool,
}

/// Which end of a log-shipping link is the primary now. Kept on the share in
/// `<share>/<link>.roles.json`; without the file, the topology's primary ships to its
/// secondary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Roles {
    pub link: String,
    pub primary: String,
    pub secondary: String,
    /// The primary's log ships to the secondary. False from a failover until the roles are
    /// reversed: the secondary is then the store that was failed over, and must not serve.
    pub shipping: bool,
    /// How many times the roles changed.
    pub epoch: u64,
    /// The failover that made `primary` the primary, if one did.
    pub failover: Option<FailedOver>,
}

fn roles_path(share: &Path, link: &str) -> PathBuf {
    share.join(format!("{link}.roles.json"))
}

/// The roles of `link` on `share`; `primary` and `secondary` (the topology's) when no role
/// change was recorded.
pub fn roles(
    share: &Path,
    link: &str,
    primary: &str,
    secondary: &str,
) -> Result<Roles, StoreError> {
    let path = roles_path(share, link);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Storage(format!("{}: unreadable link roles: {e}", path.display()))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Roles {
            link: link.to_string(),
            primary: primary.to_string(),
            secondary: secondary.to_string(),
            shipping: true,
            epoch: 0,
            failover: None,
        }),
        Err(e) => Err(StoreError::Storage(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

fn save_roles(share: &Path, roles: &Roles) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(roles)
        .map_err(|e| StoreError::Storage(format!("cannot encode the link roles: {e}")))?;
    backup::write_file_atomic(&roles_path(share, &roles.link), &bytes)
}

/// A planned failover's hand-over, kept on the share in `<share>/<link>.handover.json`: the
/// secondary asks; the primary's backup job closes the primary's writes, takes the last log
/// backup and answers with the LSN it ends at; the secondary restores up to there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handover {
    pub link: String,
    pub from: String,
    pub to: String,
    /// The roles' epoch it was asked in: a hand-over asked before a later change is void.
    pub epoch: u64,
    pub asked_ms: u64,
    /// The primary's answer: the last LSN of its last log backup.
    pub done_lsn: Option<u64>,
    /// Or why it could not hand over.
    pub failed: Option<String>,
}

fn handover_path(share: &Path, link: &str) -> PathBuf {
    share.join(format!("{link}.handover.json"))
}

/// The hand-over of `link` on `share`, if one was asked.
pub fn handover(share: &Path, link: &str) -> Option<Handover> {
    let bytes = std::fs::read(handover_path(share, link)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn save_handover(share: &Path, h: &Handover) -> Result<(), StoreError> {
    let bytes = serde_json::to_vec_pretty(h)
        .map_err(|e| StoreError::Storage(format!("cannot encode the hand-over: {e}")))?;
    backup::write_file_atomic(&handover_path(share, &h.link), &bytes)
}

/// Moves `path` (a file or directory), if it exists, to `<path>.<suffix>` beside it.
fn set_aside(path: &Path, suffix: &str) -> Result<Option<PathBuf>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{suffix}"));
    let to = path.with_file_name(name);
    std::fs::rename(path, &to).map_err(|e| {
        StoreError::Storage(format!(
            "cannot move {} to {}: {e}",
            path.display(),
            to.display()
        ))
    })?;
    Ok(Some(to))
}

/// What `tandem logship reverse` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReverseReport {
    pub link: String,
    /// The new primary, now shipping.
    pub primary: String,
    /// The new secondary (the old primary), to be reseeded.
    pub secondary: String,
    /// The full backup that starts the new chain.
    pub full_lsn: u64,
    /// Where the share's earlier backups of the new primary went, if it had some.
    pub archived: Option<String>,
}

impl Secondary {
    /// Loads the jobs' state and starts them. With `opener`, the secondary is one replica of
    /// a replicated store: `cfg.db` is the seed the jobs restore, and once the link fails
    /// over to the store, the seed becomes the replica's database and `opener` opens it
    /// ([`Secondary::open_replica`]).
    pub fn start(
        cfg: SecondaryConfig,
        opener: Option<NodeOpener>,
    ) -> Result<Arc<Secondary>, StoreError> {
        std::fs::create_dir_all(&cfg.copy_dir).map_err(|e| {
            StoreError::Storage(format!("cannot create {}: {e}", cfg.copy_dir.display()))
        })?;
        let saved: Option<JobState> = match std::fs::read(cfg.copy_dir.join("state.json")) {
            Ok(bytes) => Some(serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::Storage(format!(
                    "{}: unreadable job state: {e}",
                    cfg.copy_dir.join("state.json").display()
                ))
            })?),
            Err(_) => None,
        };
        // A database these jobs did not restore from this primary — the link's old primary,
        // now its secondary after a reversal — is set aside, and the secondary reseeded.
        let reseed = match &saved {
            None => cfg.db.exists(),
            Some(st) => !st.source.is_empty() && st.source != cfg.primary,
        };
        let mut state = if reseed {
            let suffix = format!("replaced-{}", now_ms());
            let mut moved = Vec::new();
            for f in ["", "-wal", "-shm"] {
                let mut name = cfg.db.file_name().unwrap_or_default().to_os_string();
                name.push(f);
                if let Some(to) = set_aside(&cfg.db.with_file_name(name), &suffix)? {
                    moved.push(to.display().to_string());
                }
            }
            set_aside(&cfg.copy_dir, &suffix)?;
            std::fs::create_dir_all(&cfg.copy_dir).map_err(|e| {
                StoreError::Storage(format!("cannot create {}: {e}", cfg.copy_dir.display()))
            })?;
            tracing::warn!(link = %cfg.link, store = %cfg.secondary, from = %cfg.primary, set_aside = ?moved,
                "log shipping: this store is now the secondary of {}; its database is set aside and will be reseeded", cfg.primary);
            JobState::default()
        } else {
            saved.unwrap_or_default()
        };
        state.source = cfg.primary.clone();
        let s = Arc::new(Secondary {
            cfg,
            state: Mutex::new(state.clone()),
            started_ms: now_ms(),
            job: Mutex::new(()),
            promoted: OnceLock::new(),
            opener,
            node: OnceLock::new(),
            opening: tokio::sync::Mutex::new(()),
        });
        s.save(&state);
        tokio::spawn(s.clone().run());
        Ok(s)
    }

    pub fn config(&self) -> &SecondaryConfig {
        &self.cfg
    }

    fn state(&self) -> JobState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn save(&self, st: &JobState) {
        if let Ok(mut s) = self.state.lock() {
            *s = st.clone();
        }
        let path = self.cfg.copy_dir.join("state.json");
        let written = serde_json::to_vec_pretty(st)
            .map_err(|e| e.to_string())
            .and_then(|b| backup::write_file_atomic(&path, &b).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::warn!(link = %self.cfg.link, error = %e, "cannot save the log-shipping state");
        }
    }

    async fn run(self: Arc<Self>) {
        let tick = self
            .cfg
            .copy_interval
            .min(self.cfg.restore_interval)
            .max(Duration::from_millis(100));
        let (mut next_copy, mut next_restore) = (0u64, 0u64);
        loop {
            if self.is_online() {
                return;
            }
            let now = now_ms();
            if now >= next_copy {
                next_copy = now + self.cfg.copy_interval.as_millis() as u64;
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.copy_once()).await;
            }
            if now >= next_restore {
                next_restore = now + self.cfg.restore_interval.as_millis() as u64;
                let me = self.clone();
                let _ = tokio::task::spawn_blocking(move || me.restore_once()).await;
            }
            tokio::time::sleep(tick).await;
        }
    }

    /// The copy job: every full backup and segment on the share that the copy folder lacks,
    /// copied atomically (manifest last).
    pub fn copy_once(&self) {
        let Ok(_job) = self.job.lock() else { return };
        if self.is_online() {
            return;
        }
        let mut st = self.state();
        let restored = st.last_restored_lsn;
        match backup::copy_new(
            &self.cfg.share,
            &self.cfg.copy_dir,
            &self.cfg.primary,
            restored,
        ) {
            Ok(newest) => {
                st.last_copy_ms = now_ms();
                st.last_copied_lsn = st.last_copied_lsn.max(newest);
                // The copy folder keeps what is not restored yet, whatever its age.
                if let Err(e) = backup::prune(
                    &self.cfg.copy_dir,
                    &self.cfg.primary,
                    self.cfg.retention,
                    Some(st.last_restored_lsn),
                ) {
                    tracing::warn!(link = %self.cfg.link, error = %e, "cannot apply the retention to the copy folder");
                }
                if st.error.as_ref().is_some_and(|e| e.starts_with("copy")) {
                    st.error = None;
                }
            }
            Err(e) => {
                tracing::warn!(link = %self.cfg.link, error = %e, "log shipping: copy failed");
                st.error = Some(format!("copy: {e}"));
            }
        }
        self.save(&st);
    }

    /// The restore job: seeds the database from the newest full backup when it has none, then
    /// applies the copied segments' commands applied on the primary at least the delay ago.
    pub fn restore_once(&self) {
        let Ok(_job) = self.job.lock() else { return };
        if self.is_online() {
            return;
        }
        let mut st = self.state();
        let until = now_ms().saturating_sub(self.cfg.restore_delay.as_millis() as u64);
        // Every command applied before the newest copied backup was taken is in the copy
        // folder, so the restore below makes the database complete up to the older of the two.
        let copied_ms = backup::list_segments(&self.cfg.copy_dir, &self.cfg.primary)
            .map(|v| {
                v.into_iter()
                    .filter_map(|f| f.manifest.ok())
                    .map(|m| m.taken_ms)
                    .max()
            })
            .ok()
            .flatten();
        match self.restore_to(Target::Time(until)) {
            Ok((lsn, commit_ms)) => {
                if lsn > 0 {
                    st.complete_until_ms =
                        st.complete_until_ms.max(until.min(copied_ms.unwrap_or(0)));
                }
                st.last_restore_ms = now_ms();
                st.last_restored_lsn = lsn;
                if let Some(ms) = commit_ms {
                    st.last_restored_commit_ms = ms;
                }
                if st.error.as_ref().is_some_and(|e| e.starts_with("restore")) {
                    st.error = None;
                }
            }
            Err(e) => {
                tracing::warn!(link = %self.cfg.link, error = %e, "log shipping: restore stopped");
                if let Ok(conn) = rusqlite::Connection::open_with_flags(
                    &self.cfg.db,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
                ) && let Ok(lsn) = machine::lsn(&conn)
                {
                    st.last_restored_lsn = lsn;
                }
                st.error = Some(format!("restore: {e}"));
            }
        }
        self.save(&st);
    }

    fn restore_to(&self, target: Target) -> Result<(u64, Option<u64>), StoreError> {
        if !self.cfg.db.exists() {
            // Seeding: the newest full backup in the copy folder taken at least the delay
            // ago (everything in it was committed before it was taken).
            let fulls: Vec<backup::Manifest> = backup::list(&self.cfg.copy_dir, &self.cfg.primary)?
                .into_iter()
                .filter_map(|f| f.manifest.ok())
                .collect();
            let until = match target {
                Target::Time(t) => t,
                _ => u64::MAX,
            };
            let Some(full) = fulls.iter().rev().find(|m| m.taken_ms <= until) else {
                return Ok((0, None));
            };
            backup::restore_full(&self.cfg.copy_dir, full, &self.cfg.db)?;
            tracing::info!(link = %self.cfg.link, lsn = full.lsn, "log shipping: secondary seeded from a full backup");
        }
        let conn = crate::sqlite::open_connection(&self.cfg.db, crate::sqlite::Sync::Full)?;
        machine::init_schema(&conn)?;
        let from = machine::lsn(&conn)?;
        let (lsn, last_ms, _) =
            backup::catch_up(&self.cfg.copy_dir, &self.cfg.primary, target, from, &conn)?;
        Ok((lsn, last_ms))
    }

    /// After a failover, the secondary as a writable store.
    pub fn promoted(&self) -> Option<&crate::Store> {
        self.promoted.get()
    }

    /// After a failover to a replicated secondary, this server's replica of it.
    pub fn replica(&self) -> Option<&Arc<crate::node::StoreNode>> {
        self.node.get()
    }

    /// Whether the secondary serves (the link failed over to it, and it is open here).
    pub fn is_online(&self) -> bool {
        self.promoted.get().is_some() || self.node.get().is_some()
    }

    /// Whether the secondary is one replica of a replicated store.
    pub fn is_replicated(&self) -> bool {
        self.opener.is_some()
    }

    /// For a replicated secondary once the link failed over to it: restores the seed up to
    /// the failover's LSN (on the replica that ran the failover, it is there already), makes
    /// it the replica's database without a replicated position, and opens the replica. Every
    /// replica does this from the same chain, so they start the group from the same state.
    pub async fn open_replica(self: &Arc<Self>) -> Result<(), StoreError> {
        let Some(opener) = self.opener.clone() else {
            return Ok(());
        };
        let _opening = self.opening.lock().await;
        if self.node.get().is_some() {
            return Ok(());
        }
        let roles = self.roles()?;
        if roles.primary != self.cfg.secondary {
            return Err(StoreError::Invalid(format!(
                "the link was not failed over to {}",
                self.cfg.secondary
            )));
        }
        let want = roles.failover.as_ref().map_or(0, |f| f.lsn);
        let me = self.clone();
        let node_db = self.cfg.db.with_file_name("store.sqlite");
        let seeded = tokio::task::spawn_blocking(move || -> Result<u64, StoreError> {
            let _job = me
                .job
                .lock()
                .map_err(|_| StoreError::Storage("the log-shipping jobs failed".into()))?;
            if me.cfg.db.exists() {
                let restored = me.state().last_restored_lsn;
                let _ = backup::copy_new(&me.cfg.share, &me.cfg.copy_dir, &me.cfg.primary, restored);
                let (lsn, _) = me.restore_to(Target::Latest)?;
                if lsn < want {
                    return Err(StoreError::Invalid(format!(
                        "this replica's seed reached LSN {lsn}, short of LSN {want} where the link failed over"
                    )));
                }
                let conn = crate::sqlite::open_connection(&me.cfg.db, crate::sqlite::Sync::Full)?;
                machine::reopen_writes(&conn)?;
                drop(conn);
                for f in ["-wal", "-shm"] {
                    let mut name = me.cfg.db.file_name().unwrap_or_default().to_os_string();
                    name.push(f);
                    let _ = std::fs::remove_file(me.cfg.db.with_file_name(name));
                }
                std::fs::rename(&me.cfg.db, &node_db).map_err(|e| {
                    StoreError::Storage(format!(
                        "cannot move {} to {}: {e}",
                        me.cfg.db.display(),
                        node_db.display()
                    ))
                })?;
                if let Some(dir) = node_db.parent() {
                    crate::sqlite::sync_dir(dir)?;
                }
                // The group starts anew from this state: no replicated position.
                crate::replicated::SqliteMachine::open(&node_db)?.forget_position()?;
                Ok(lsn)
            } else if node_db.exists() {
                // Moved already (opening failed after it): open it as it is.
                Ok(want)
            } else {
                Err(StoreError::Invalid(format!(
                    "{} holds nothing: no backup was restored here",
                    me.cfg.secondary
                )))
            }
        })
        .await
        .map_err(|e| StoreError::Storage(format!("the seed stopped: {e}")))??;
        let node = opener().await.map_err(StoreError::Storage)?;
        let _ = self.node.set(node);
        let mut st = self.state();
        st.last_restored_lsn = seeded;
        st.source = self.cfg.secondary.clone();
        self.save(&st);
        tracing::warn!(link = %self.cfg.link, store = %self.cfg.secondary, lsn = seeded,
            "log shipping: this replica of the failed-over store is open; the group starts from LSN {seeded}");
        Ok(())
    }

    /// A read on the standby database, between restores; with the time up to which it holds
    /// everything the primary applied (unix ms). Refused in no-recovery mode, before the
    /// first restore and once the secondary is online (read the store then).
    pub fn read<T, F>(&self, f: F) -> Result<(T, u64), StoreError>
    where
        F: FnOnce(&rusqlite::Connection) -> Result<T, StoreError>,
    {
        if self.cfg.mode != "standby" {
            return Err(StoreError::Invalid(format!(
                "{} is a log-shipping secondary in {} mode: it is not readable",
                self.cfg.secondary, self.cfg.mode
            )));
        }
        let st = self.state();
        if st.complete_until_ms == 0 || !self.cfg.db.exists() {
            return Err(StoreError::Invalid(format!(
                "{} holds nothing yet: no backup of {} was restored",
                self.cfg.secondary, self.cfg.primary
            )));
        }
        let conn = crate::sqlite::open_connection(&self.cfg.db, crate::sqlite::Sync::ReadOnly)?;
        Ok((f(&conn)?, st.complete_until_ms))
    }

    /// The store brought online by a failover, or why there is none.
    pub fn online(&self) -> Result<&crate::Store, StoreError> {
        self.promoted.get().ok_or_else(|| {
            StoreError::WritesClosed(format!(
                "{} is the log-shipping secondary of {}: it serves once the link is failed over to it",
                self.cfg.secondary, self.cfg.primary
            ))
        })
    }

    /// Refuses a failover before anything is asked of the primary when this secondary holds
    /// nothing and has no full backup to start from (in its copy folder or on the share):
    /// closing the primary's writes for a secondary that cannot come online would leave no
    /// store serving.
    pub fn check_seeded(&self) -> Result<(), StoreError> {
        let has_full = |dir: &Path| {
            backup::list(dir, &self.cfg.primary).is_ok_and(|v| v.iter().any(|f| f.manifest.is_ok()))
        };
        if self.cfg.db.exists()
            || self.node.get().is_some()
            || has_full(&self.cfg.copy_dir)
            || has_full(&self.cfg.share)
        {
            Ok(())
        } else {
            Err(StoreError::Invalid(format!(
                "{} holds nothing yet and no full backup of {} is there to start from: nothing \
                 to fail over to",
                self.cfg.secondary, self.cfg.primary
            )))
        }
    }

    /// The link's roles on the share.
    pub fn roles(&self) -> Result<Roles, StoreError> {
        roles(
            &self.cfg.share,
            &self.cfg.link,
            &self.cfg.primary,
            &self.cfg.secondary,
        )
    }

    /// A planned failover: asks the primary to hand over (its backup job closes its writes
    /// and takes the last log backup), waits up to `wait` for its answer, then brings the
    /// secondary online with everything the primary committed. Nothing is lost; if the
    /// primary does not answer, nothing changes here and the error says what to do.
    pub fn planned_failover(&self, wait: Duration) -> Result<FailoverReport, StoreError> {
        let roles = self.roles()?;
        self.check_seeded()?;
        if self.is_online() || roles.primary != self.cfg.primary {
            return Err(StoreError::Invalid(format!(
                "{} is already online: the link was failed over",
                self.cfg.secondary
            )));
        }
        let asked = match handover(&self.cfg.share, &self.cfg.link) {
            // An answer to an earlier request, given after it timed out.
            Some(h) if h.epoch == roles.epoch && h.from == self.cfg.primary => h,
            _ => {
                let h = Handover {
                    link: self.cfg.link.clone(),
                    from: self.cfg.primary.clone(),
                    to: self.cfg.secondary.clone(),
                    epoch: roles.epoch,
                    asked_ms: now_ms(),
                    done_lsn: None,
                    failed: None,
                };
                save_handover(&self.cfg.share, &h)?;
                h
            }
        };
        tracing::info!(link = %self.cfg.link, from = %asked.from, "log shipping: hand-over asked");
        let deadline = std::time::Instant::now() + wait;
        let answer = loop {
            match handover(&self.cfg.share, &self.cfg.link) {
                Some(h) if h.done_lsn.is_some() || h.failed.is_some() => break Some(h),
                _ if std::time::Instant::now() >= deadline => break None,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let answer = match answer {
            Some(h) => h,
            None => {
                let _ = std::fs::remove_file(handover_path(&self.cfg.share, &self.cfg.link));
                return Err(StoreError::Invalid(format!(
                    "{} did not hand over within {} s: its backup job is not running (is its site \
                     down?). Nothing changed here. If its site is lost, run an unplanned failover \
                     (`tandem logship failover {}` without --planned)",
                    self.cfg.primary,
                    wait.as_secs(),
                    self.cfg.link
                )));
            }
        };
        let _ = std::fs::remove_file(handover_path(&self.cfg.share, &self.cfg.link));
        if let Some(why) = answer.failed {
            return Err(StoreError::Invalid(format!(
                "{} could not hand over: {why}",
                self.cfg.primary
            )));
        }
        let lsn = answer.done_lsn.unwrap_or(0);
        self.failover(
            None,
            (
                format!(
                    "hand-over by {}: its writes closed, its last log backup ends at LSN {lsn}",
                    self.cfg.primary
                ),
                true,
            ),
            Some(lsn),
        )
    }

    /// Brings the secondary online as a writable store: stops the jobs, takes a tail-log
    /// backup from the primary's database file when `tail_from` names one that can still be
    /// read (`tail` says what the caller did otherwise), copies and restores everything on
    /// the share (no delay), records the new roles on the share so the old primary never
    /// writes again, and opens the database for writes. With `handed_over` (the LSN a
    /// hand-over ended at), it refuses to come online short of that LSN.
    pub fn failover(
        &self,
        tail_from: Option<&std::path::Path>,
        mut tail: (String, bool),
        handed_over: Option<u64>,
    ) -> Result<FailoverReport, StoreError> {
        let _job = self
            .job
            .lock()
            .map_err(|_| StoreError::Storage("the log-shipping jobs failed".into()))?;
        if self.is_online() || self.roles()?.primary == self.cfg.secondary {
            return Err(StoreError::Invalid(format!(
                "{} is already online: the link was failed over",
                self.cfg.secondary
            )));
        }
        if let Some(file) = tail_from {
            tail = match backup::take_log(file, &self.cfg.share, &self.cfg.primary, "tail-log") {
                Ok(Some(seg)) => (
                    format!(
                        "tail-log backup of {}: LSN {}..{}",
                        file.display(),
                        seg.first,
                        seg.last
                    ),
                    true,
                ),
                Ok(None) => (
                    format!(
                        "tail-log backup of {}: nothing after the last backup",
                        file.display()
                    ),
                    true,
                ),
                Err(e) => (format!("no tail-log backup: {e}"), false),
            };
        }
        // A bad file stops the copy and the restore at the last good command: the secondary
        // comes online there, and the report says why.
        let restored = self.state().last_restored_lsn;
        let copied = backup::copy_new(
            &self.cfg.share,
            &self.cfg.copy_dir,
            &self.cfg.primary,
            restored,
        );
        let restored = self.restore_to(Target::Latest);
        if !self.cfg.db.exists() {
            return Err(StoreError::Invalid(format!(
                "{} holds nothing yet (no full backup was restored): nothing to fail over to",
                self.cfg.secondary
            )));
        }
        let (lsn, last_ms, stopped) = match restored {
            Ok((lsn, ms)) => (lsn, ms, copied.err().map(|e| e.to_string())),
            Err(e) => {
                let conn =
                    crate::sqlite::open_connection(&self.cfg.db, crate::sqlite::Sync::ReadOnly)?;
                (machine::lsn(&conn)?, None, Some(e.to_string()))
            }
        };
        if let Some(want) = handed_over
            && lsn < want
        {
            return Err(StoreError::Invalid(format!(
                "the restore reached LSN {lsn}, short of LSN {want} where {} handed over{}; \
                 {} stays offline (its primary's writes are closed): fix the share, or bring it \
                 online with what it has with an unplanned failover",
                self.cfg.primary,
                stopped
                    .as_ref()
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default(),
                self.cfg.secondary
            )));
        }
        let roles = self.roles()?;
        let next = Roles {
            link: self.cfg.link.clone(),
            primary: self.cfg.secondary.clone(),
            secondary: self.cfg.primary.clone(),
            shipping: false,
            epoch: roles.epoch + 1,
            failover: Some(FailedOver {
                from: self.cfg.primary.clone(),
                to: self.cfg.secondary.clone(),
                lsn,
                at_ms: now_ms(),
                planned: handed_over.is_some(),
            }),
        };
        save_roles(&self.cfg.share, &next)?;
        {
            // A hand-over closed the primary's writes in its last segment: not this store's.
            let conn = crate::sqlite::open_connection(&self.cfg.db, crate::sqlite::Sync::Full)?;
            machine::reopen_writes(&conn)?;
        }
        if self.opener.is_none() {
            let store = crate::Store::open_local(&self.cfg.db, crate::Options::default())?;
            let _ = self.promoted.set(store);
        }
        let mut st = self.state();
        st.last_restored_lsn = lsn;
        st.last_restore_ms = now_ms();
        if let Some(ms) = last_ms {
            st.last_restored_commit_ms = ms;
        }
        st.error = None;
        // The database is its own from now on: as a secondary again, it is reseeded.
        st.source = self.cfg.secondary.clone();
        self.save(&st);
        tracing::warn!(link = %self.cfg.link, lsn, "log shipping: failed over; the secondary is online");
        Ok(FailoverReport {
            link: self.cfg.link.clone(),
            primary: self.cfg.primary.clone(),
            secondary: self.cfg.secondary.clone(),
            tail: tail.0,
            tail_taken: tail.1,
            last_lsn: lsn,
            last_commit_ms: last_ms.or(Some(st.last_restored_commit_ms).filter(|m| *m > 0)),
            stopped,
        })
    }

    /// The link as this secondary sees it now (once online, as its primary).
    pub fn status(&self) -> LinkStatus {
        if self.is_online() {
            return PrimaryLink {
                link: self.cfg.link.clone(),
                primary: self.cfg.primary.clone(),
                secondary: self.cfg.secondary.clone(),
                store: self.cfg.secondary.clone(),
                share: self.cfg.share.clone(),
                db: self.cfg.db.with_file_name("store.sqlite"),
                backup_alert: self.cfg.backup_alert,
                started_ms: self.started_ms,
            }
            .status();
        }
        let roles = self.roles();
        let st = self.state();
        let now = now_ms();
        let segments: Vec<backup::SegmentManifest> =
            backup::list_segments(&self.cfg.share, &self.cfg.primary)
                .map(|v| v.into_iter().filter_map(|f| f.manifest.ok()).collect())
                .unwrap_or_default();
        let (last_backup_lsn, last_backup_ms) =
            newest_backup(&self.cfg.share, &self.cfg.primary, &segments);
        let lag_tx = last_backup_lsn.saturating_sub(st.last_restored_lsn);
        // The oldest command waiting: the first segment past what is restored.
        let waiting_since = segments
            .iter()
            .filter(|m| m.last > st.last_restored_lsn)
            .map(|m| {
                if m.first > st.last_restored_lsn {
                    m.first_ms
                } else {
                    st.last_restored_commit_ms.max(m.first_ms)
                }
            })
            .min();
        let lag_s = match waiting_since {
            Some(t) if lag_tx > 0 => now.saturating_sub(t) as f64 / 1000.0,
            _ => 0.0,
        };
        let mut alerts = Vec::new();
        let since = |t: u64| now.saturating_sub(t);
        let last_or_start = |t: u64| if t == 0 { self.started_ms } else { t };
        if since(last_or_start(last_backup_ms)) > self.cfg.backup_alert.as_millis() as u64 {
            alerts.push(format!(
                "no log backup for more than {} s",
                self.cfg.backup_alert.as_secs()
            ));
        }
        if since(last_or_start(st.last_restore_ms)) > self.cfg.restore_alert.as_millis() as u64 {
            alerts.push(format!(
                "no restore for more than {} s",
                self.cfg.restore_alert.as_secs()
            ));
        }
        if let Some(e) = &st.error {
            alerts.push(e.clone());
        }
        let (state, epoch) = match &roles {
            Ok(r) if r.primary == self.cfg.primary => (state_name(r), r.epoch),
            Ok(r) => {
                alerts.push(format!(
                    "the link's primary is now {}: restart this server to follow it",
                    r.primary
                ));
                (state_name(r), r.epoch)
            }
            Err(e) => {
                alerts.push(e.to_string());
                ("unknown".into(), 0)
            }
        };
        LinkStatus {
            side: "secondary".into(),
            link: self.cfg.link.clone(),
            primary: self.cfg.primary.clone(),
            secondary: self.cfg.secondary.clone(),
            mode: self.cfg.mode.clone(),
            state,
            epoch,
            last_backup_lsn,
            last_backup_ms,
            last_copied_lsn: Some(st.last_copied_lsn),
            last_copy_ms: Some(st.last_copy_ms),
            last_restored_lsn: Some(st.last_restored_lsn),
            last_restore_ms: Some(st.last_restore_ms),
            lag_tx,
            lag_s,
            primary_lsn: None,
            complete_until_ms: Some(st.complete_until_ms).filter(|t| *t > 0),
            alert: !alerts.is_empty(),
            alerts,
        }
    }
}

/// The newest backup of `store` on `share`, log or full (a chain starts with a full one):
/// its last LSN and when it was taken; `(0, 0)` when there is none.
fn newest_backup(
    share: &std::path::Path,
    store: &str,
    segments: &[backup::SegmentManifest],
) -> (u64, u64) {
    let fulls = backup::list(share, store)
        .map(|v| {
            v.into_iter()
                .filter_map(|f| f.manifest.ok())
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    segments
        .iter()
        .map(|m| (m.last, m.taken_ms))
        .chain(fulls.iter().map(|m| (m.lsn, m.taken_ms)))
        .max()
        .unwrap_or((0, 0))
}

/// The primary a secondary's jobs restore from, as their state in `copy_dir` says (None
/// before they ever ran there).
pub fn restoring_from(copy_dir: &Path) -> Option<String> {
    let bytes = std::fs::read(copy_dir.join("state.json")).ok()?;
    serde_json::from_slice::<JobState>(&bytes)
        .ok()
        .map(|s| s.source)
}

fn state_name(r: &Roles) -> String {
    if r.shipping {
        "shipping"
    } else {
        "failed-over"
    }
    .to_string()
}

/// A log-shipping link as a server that serves one of its stores sees it: the primary's side
/// of the link, or a store that was failed over.
#[derive(Debug, Clone)]
pub struct PrimaryLink {
    pub link: String,
    /// The topology's ends of the link (the roles when none changed).
    pub primary: String,
    pub secondary: String,
    /// The end this server serves.
    pub store: String,
    pub share: PathBuf,
    /// The primary's database as this server holds it.
    pub db: PathBuf,
    pub backup_alert: Duration,
    /// When this server started (unix ms).
    pub started_ms: u64,
}

impl PrimaryLink {
    /// The link from the primary's side: its LSN, the newest backup on the share, and what
    /// is not on the share yet (the commands after the last log backup, the truncation that
    /// followed it aside).
    pub fn status(&self) -> LinkStatus {
        let now = now_ms();
        let mut alerts = Vec::new();
        let roles = match roles(&self.share, &self.link, &self.primary, &self.secondary) {
            Ok(r) => r,
            Err(e) => {
                alerts.push(e.to_string());
                Roles {
                    link: self.link.clone(),
                    primary: self.primary.clone(),
                    secondary: self.secondary.clone(),
                    shipping: true,
                    epoch: 0,
                    failover: None,
                }
            }
        };
        if roles.primary != self.store {
            // This store was failed over.
            let lsn = roles.failover.as_ref().map_or(0, |f| f.lsn);
            alerts.push(format!(
                "{} was failed over to {} (at LSN {lsn}): it takes no writes; {}",
                self.store,
                roles.primary,
                if roles.shipping {
                    "restart its servers to reseed it as the new secondary".to_string()
                } else {
                    format!(
                        "to make it the new secondary, run `tandem logship reverse {}` on {}'s server, then restart its servers",
                        self.link, roles.primary
                    )
                }
            ));
            return LinkStatus {
                side: "failed-over".into(),
                link: self.link.clone(),
                primary: roles.primary.clone(),
                secondary: roles.secondary.clone(),
                mode: String::new(),
                state: state_name(&roles),
                epoch: roles.epoch,
                last_backup_lsn: 0,
                last_backup_ms: 0,
                last_copied_lsn: None,
                last_copy_ms: None,
                last_restored_lsn: None,
                last_restore_ms: None,
                lag_tx: 0,
                lag_s: 0.0,
                primary_lsn: None,
                complete_until_ms: None,
                alert: true,
                alerts,
            };
        }
        if !roles.shipping {
            alerts.push(format!(
                "not shipping since the failover from {}: run `tandem logship reverse {}` here once its site is back",
                roles.secondary, self.link
            ));
        }
        let segments: Vec<backup::SegmentManifest> =
            backup::list_segments(&self.share, &self.store)
                .map(|v| v.into_iter().filter_map(|f| f.manifest.ok()).collect())
                .unwrap_or_default();
        let (last_backup_lsn, last_backup_ms) = newest_backup(&self.share, &self.store, &segments);
        let read = || -> Result<(u64, u64, Option<u64>), StoreError> {
            let conn = crate::sqlite::open_connection(&self.db, crate::sqlite::Sync::ReadOnly)?;
            let lsn = machine::lsn(&conn)?;
            if !machine::txlog_on(&conn)? {
                // Nothing is logged yet: everything after the last backup is at risk.
                return Ok((lsn, lsn.saturating_sub(last_backup_lsn), None));
            }
            let mut stmt = conn.prepare("SELECT at_ms, envelope FROM txlog WHERE lsn > ?1")?;
            let rows = stmt
                .query_map([last_backup_lsn as i64], |r| {
                    Ok((r.get::<_, i64>(0)? as u64, r.get::<_, Vec<u8>>(1)?))
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let pending: Vec<u64> = rows
                .into_iter()
                .filter(|(_, env)| {
                    !postcard::from_bytes::<crate::Envelope>(env).is_ok_and(|e| {
                        matches!(e.cmd, crate::Command::TruncateTransactionLog { .. })
                    })
                })
                .map(|(at, _)| at)
                .collect();
            Ok((lsn, pending.len() as u64, pending.iter().min().copied()))
        };
        let (primary_lsn, lag_tx, oldest) = match read() {
            Ok((lsn, n, oldest)) => (Some(lsn), n, oldest),
            Err(e) => {
                alerts.push(format!("cannot read the primary's database: {e}"));
                (None, 0, None)
            }
        };
        let since_backup = now.saturating_sub(if last_backup_ms == 0 {
            self.started_ms
        } else {
            last_backup_ms
        });
        if since_backup > self.backup_alert.as_millis() as u64 {
            alerts.push(format!(
                "no log backup for more than {} s",
                self.backup_alert.as_secs()
            ));
        }
        LinkStatus {
            side: "primary".into(),
            link: self.link.clone(),
            primary: roles.primary.clone(),
            secondary: roles.secondary.clone(),
            mode: String::new(),
            state: state_name(&roles),
            epoch: roles.epoch,
            last_backup_lsn,
            last_backup_ms,
            last_copied_lsn: None,
            last_copy_ms: None,
            last_restored_lsn: None,
            last_restore_ms: None,
            lag_tx,
            lag_s: oldest.map_or(0.0, |t| now.saturating_sub(t) as f64 / 1000.0),
            primary_lsn,
            complete_until_ms: None,
            alert: !alerts.is_empty(),
            alerts,
        }
    }
}

/// What serves one end of a link on this server.
#[derive(Clone)]
pub enum Source {
    /// A standalone store.
    Local(crate::Store),
    /// A replica of an availability group or a mirroring session: it acts while it is the
    /// primary.
    Node(Arc<crate::node::StoreNode>),
    /// A failover-cluster node: it acts while it owns the storage.
    Cluster(Arc<crate::cluster::ClusterNode>),
    /// The link's secondary: it serves once failed over to.
    Secondary(Arc<Secondary>),
}

impl Source {
    fn replicated(&self) -> bool {
        match self {
            Source::Node(_) | Source::Cluster(_) => true,
            Source::Secondary(sec) => sec.is_replicated(),
            Source::Local(_) => false,
        }
    }

    async fn backup(
        &self,
        req: crate::proto::BackupRequest,
        db: &Path,
        store: &str,
        me: &str,
    ) -> crate::proto::Reply<backup::LogBackup> {
        let local = match self {
            Source::Node(n) => return n.backup(req).await,
            Source::Cluster(c) => return c.backup(req).await,
            Source::Local(s) => s,
            Source::Secondary(sec) => match (sec.promoted(), sec.replica()) {
                (Some(s), _) => s,
                (None, Some(n)) => return n.backup(req).await,
                (None, None) => {
                    return Err(crate::proto::Refusal::Unavailable(
                        "the secondary is not online".into(),
                    ));
                }
            },
        };
        crate::node::run_backup_request(
            db.to_path_buf(),
            req,
            store.to_string(),
            me.to_string(),
            |cmd| async move {
                local
                    .apply(cmd)
                    .await
                    .map(|_| ())
                    .map_err(crate::proto::Refusal::Store)
            },
        )
        .await
    }

    async fn apply(&self, cmd: crate::Command) -> crate::proto::Reply<()> {
        let env = |cmd| crate::Envelope {
            request: Some(crate::node::random_id()),
            cmd,
        };
        let local = match self {
            Source::Node(n) => return n.apply(env(cmd)).await.map(|_| ()),
            Source::Cluster(c) => return c.apply(env(cmd)).await.map(|_| ()),
            Source::Local(s) => s,
            Source::Secondary(sec) => match (sec.promoted(), sec.replica()) {
                (Some(s), _) => s,
                (None, Some(n)) => return n.apply(env(cmd)).await.map(|_| ()),
                (None, None) => return Ok(()),
            },
        };
        local
            .apply(cmd)
            .await
            .map(|_| ())
            .map_err(crate::proto::Refusal::Store)
    }
}

/// The primary's side of a link, for one end this server serves: while the roles make it the
/// primary and ship, a log backup every `every` (and a full one every half `retention`),
/// then the retention policy; a hand-over as soon as the secondary asks for one. When the roles
/// say this end was failed over while it runs, it closes its writes (every replica of it,
/// for good) and stops.
pub async fn ship(
    link: PrimaryLink,
    source: Source,
    every: Duration,
    retention: Duration,
    me: String,
) {
    let share = link.share.to_string_lossy().into_owned();
    let request = crate::proto::BackupRequest {
        share: share.clone(),
        log: true,
        full_every_s: Some(retention.as_secs() / 2),
        close_writes: None,
    };
    // The roles and a hand-over are looked at every second at most; backups every `every`.
    let tick = every.min(Duration::from_secs(1));
    let mut next_backup = std::time::Instant::now() + every;
    loop {
        tokio::time::sleep(tick).await;
        let roles = match roles(&link.share, &link.link, &link.primary, &link.secondary) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(link = %link.link, error = %e, "log shipping: cannot read the link's roles");
                continue;
            }
        };
        if let Source::Secondary(sec) = &source
            && !sec.is_online()
        {
            // The secondary restoring: its jobs run on their own. A replicated one opens its
            // replica here once the link is failed over to it (on the server that ran the
            // failover, the admin API has done it already).
            if sec.is_replicated()
                && roles.primary == link.store
                && let Err(e) = sec.open_replica().await
            {
                tracing::warn!(link = %link.link, error = %e, "cannot open this replica of the failed-over store yet");
            }
            continue;
        }
        if roles.primary != link.store {
            let reason = format!(
                "{} was failed over to {} by log shipping {}: it takes no writes until it is \
                 reseeded as the new secondary",
                link.store, roles.primary, link.link
            );
            match source.apply(crate::Command::CloseWrites { reason }).await {
                Ok(()) => {
                    tracing::error!(store = %link.store, link = %link.link, to = %roles.primary,
                        "this store was failed over by log shipping: it refuses writes from now on");
                    return;
                }
                // Another replica serves the store: it closes it.
                Err(_) if source.replicated() => continue,
                Err(e) => {
                    tracing::warn!(store = %link.store, error = %e, "cannot close the writes of a failed-over store");
                    continue;
                }
            }
        }
        if !roles.shipping {
            continue;
        }
        let asked = handover(&link.share, &link.link).filter(|h| {
            h.from == link.store
                && h.epoch == roles.epoch
                && h.done_lsn.is_none()
                && h.failed.is_none()
        });
        if asked.is_none() && std::time::Instant::now() < next_backup {
            continue;
        }
        next_backup = std::time::Instant::now() + every;
        let mut req = request.clone();
        if let Some(h) = &asked {
            req.close_writes = Some(format!(
                "{} handed over to {} by log shipping {}: it takes no writes until it is \
                 reseeded as the new secondary",
                link.store, h.to, link.link
            ));
            req.full_every_s = None;
        }
        let done = source.backup(req, &link.db, &link.store, &me).await;
        match (done, asked) {
            (Ok(b), Some(mut h)) => {
                match b.segment {
                    Some(seg) => {
                        h.done_lsn = Some(seg.last);
                        tracing::warn!(store = %link.store, link = %link.link, to = %h.to, lsn = seg.last,
                            "log shipping: handed over; this store's writes are closed");
                    }
                    None => h.failed = Some("the last log backup held nothing".into()),
                }
                if let Err(e) = save_handover(&link.share, &h) {
                    tracing::warn!(link = %link.link, error = %e, "cannot answer the hand-over");
                }
            }
            (Ok(_), None) => {
                let (dir, name) = (link.share.clone(), link.store.clone());
                let pruned = tokio::task::spawn_blocking(move || {
                    backup::prune(&dir, &name, retention, None)
                })
                .await;
                match pruned {
                    Ok(Ok(p)) if !p.files.is_empty() => {
                        tracing::info!(store = %link.store, removed = p.files.len(), "backups past the retention removed")
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(store = %link.store, error = %e, "cannot apply the backup retention")
                    }
                    Err(e) => {
                        tracing::warn!(store = %link.store, error = %e, "cannot apply the backup retention")
                    }
                }
            }
            // Another replica serves the store: it takes the backups.
            (Err(crate::proto::Refusal::NotPrimary { .. }), _)
            | (Err(crate::proto::Refusal::Unavailable(_)), _)
                if source.replicated() => {}
            (Err(e), Some(mut h)) => {
                h.failed = Some(e.to_string());
                let _ = save_handover(&link.share, &h);
            }
            (Err(e), None) => {
                tracing::warn!(store = %link.store, error = %e, "scheduled log backup failed")
            }
        }
    }
}

/// Reverses a link's roles after a failover, on the server of the store now online (`link`
/// names it, `source` serves it): it starts a new backup chain on the share (a full backup
/// now; the share's earlier backups of it are set aside, they belong to an earlier life) and
/// ships its log from now on; the old primary's servers, once restarted, reseed it from that
/// chain as the new secondary. `me` names this server.
pub async fn reverse(
    link: &PrimaryLink,
    source: &Source,
    me: &str,
) -> Result<ReverseReport, StoreError> {
    let roles = roles(&link.share, &link.link, &link.primary, &link.secondary)?;
    if roles.primary != link.store {
        return Err(StoreError::Invalid(format!(
            "{} is not the link's primary ({} is): fail the link over to it first",
            link.store, roles.primary
        )));
    }
    if roles.shipping {
        return Err(StoreError::Invalid(format!(
            "the link already ships from {} to {}",
            roles.primary, roles.secondary
        )));
    }
    let archived = set_aside(
        &link.share.join(&link.store),
        &format!("before-epoch-{}-{}", roles.epoch + 1, now_ms()),
    )?;
    let request = crate::proto::BackupRequest {
        share: link.share.to_string_lossy().into_owned(),
        log: true,
        ..Default::default()
    };
    let taken = source
        .backup(request, &link.db, &link.store, me)
        .await
        .map_err(|e| StoreError::Storage(format!("the first backup failed: {e}")))?;
    let Some(full) = taken.full else {
        return Err(StoreError::Storage(
            "the first backup of the new chain took no full backup".into(),
        ));
    };
    save_roles(
        &link.share,
        &Roles {
            shipping: true,
            epoch: roles.epoch + 1,
            ..roles.clone()
        },
    )?;
    tracing::warn!(link = %link.link, primary = %roles.primary, secondary = %roles.secondary, lsn = full.lsn,
        "log shipping: roles reversed; the new secondary reseeds when its servers start");
    Ok(ReverseReport {
        link: link.link.clone(),
        primary: roles.primary,
        secondary: roles.secondary,
        full_lsn: full.lsn,
        archived: archived.map(|p| p.display().to_string()),
    })
}
