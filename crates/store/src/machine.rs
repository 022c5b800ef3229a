//! The SQL state machine: the schema, `apply` (a command inside a transaction) and the queries.
//!
//! **Invariant:** `apply` is deterministic. It reads no clock and draws no random numbers; it
//! depends only on the database and the command. Replicated engines rely on this.

use crate::model::*;
use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// Why a command or query failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0} already exists")]
    Exists(String),
    #[error("out of order: CSeq {cseq} is not above {have} for Call-ID {call_id}")]
    OutOfOrder {
        call_id: String,
        cseq: u32,
        have: u32,
    },
    #[error("too many contacts for {aor}: {count} (at most {max})")]
    TooManyContacts { aor: String, count: u32, max: u32 },
    #[error("no publication with entity-tag {0}")]
    UnknownEtag(String),
    #[error("storage failure: {0}")]
    Storage(String),
    /// A request that cannot be carried out as asked (a bad name, a path that exists).
    #[error("{0}")]
    Invalid(String),
    #[error("the store is closed")]
    Closed,
    /// A failover-cluster owner whose fencing token is older than the storage's: another
    /// node owns the storage now, and nothing was written.
    #[error("fenced: this owner's token {token} is older than the storage's ({current})")]
    Fenced { token: u64, current: u64 },
    /// The store's writes were closed ([`Command::CloseWrites`]): another store serves now.
    #[error("{0}")]
    WritesClosed(String),
}

impl StoreError {
    /// True for failures of the storage itself, as opposed to a refused command.
    pub fn is_storage(&self) -> bool {
        matches!(
            self,
            StoreError::Storage(_) | StoreError::Closed | StoreError::Fenced { .. }
        )
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Storage(e.to_string())
    }
}

/// Runs a statement through the connection's statement cache (parsing SQL is a large part of
/// a small command's cost).
///
/// Statements that look up one key write their expiry comparisons as `expires_ms`: SQLite
/// (built with STAT4) re-prepares a statement whenever a parameter compared with an indexed
/// column changes, which here was every execution.
fn exec<P: rusqlite::Params>(c: &Connection, sql: &str, params: P) -> rusqlite::Result<usize> {
    c.prepare_cached(sql)?.execute(params)
}

/// Queries one row through the statement cache.
fn one<T, P, F>(c: &Connection, sql: &str, params: P, f: F) -> rusqlite::Result<T>
where
    P: rusqlite::Params,
    F: FnOnce(&rusqlite::Row<'_>) -> rusqlite::Result<T>,
{
    c.prepare_cached(sql)?.query_row(params, f)
}

/// Schema version written in `meta`.
pub const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS users (
    aor TEXT PRIMARY KEY,
    username TEXT NOT NULL,
    realm TEXT NOT NULL,
    ha1_md5 TEXT NOT NULL,
    ha1_sha256 TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS bindings (
    aor TEXT NOT NULL,
    contact TEXT NOT NULL,
    params TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    transport TEXT NOT NULL,
    source TEXT NOT NULL,
    flow TEXT NOT NULL,
    user_agent TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (aor, contact)
);
CREATE INDEX IF NOT EXISTS bindings_expiry ON bindings (expires_ms);
CREATE TABLE IF NOT EXISTS publications (
    etag TEXT PRIMARY KEY,
    aor TEXT NOT NULL,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS publications_aor ON publications (aor);
CREATE INDEX IF NOT EXISTS publications_expiry ON publications (expires_ms);
CREATE TABLE IF NOT EXISTS subscriptions (
    id INTEGER PRIMARY KEY,
    presentity TEXT NOT NULL,
    presentity_uri TEXT NOT NULL,
    watcher TEXT NOT NULL,
    watcher_uri TEXT NOT NULL,
    call_id TEXT NOT NULL,
    watcher_tag TEXT NOT NULL,
    local_tag TEXT NOT NULL,
    contact TEXT NOT NULL,
    transport TEXT NOT NULL,
    source TEXT NOT NULL,
    flow TEXT NOT NULL,
    expires_ms INTEGER NOT NULL,
    notify_cseq INTEGER NOT NULL,
    UNIQUE (call_id, watcher_tag, local_tag)
);
CREATE INDEX IF NOT EXISTS subscriptions_presentity ON subscriptions (presentity);
CREATE TABLE IF NOT EXISTS failovers (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    from_server TEXT,
    to_server TEXT NOT NULL,
    term INTEGER NOT NULL,
    detected_ms INTEGER NOT NULL,
    decided_ms INTEGER NOT NULL,
    first_write_ms INTEGER NOT NULL,
    last_acked_before INTEGER NOT NULL,
    last_acked_after INTEGER NOT NULL,
    lost_transactions INTEGER NOT NULL,
    lost_detail TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS meta_blob (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS requests (
    id BLOB PRIMARY KEY,
    result BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_expiry ON subscriptions (expires_ms);
INSERT OR IGNORE INTO meta (key, value) VALUES ('lsn', 0);
CREATE TABLE IF NOT EXISTS txlog (
    lsn INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    envelope BLOB NOT NULL
);
";

/// Creates the tables if needed and checks the schema version.
pub fn init_schema(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(SCHEMA)?;
    let version: Option<i64> = one(
        conn,
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )
    .optional()?;
    match version {
        None => {
            exec(
                conn,
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?1)",
                [SCHEMA_VERSION],
            )?;
        }
        Some(v) if v == SCHEMA_VERSION => {}
        // Version 1 lacked the failover history and the request table, which the schema
        // above has just created.
        Some(1) => {
            exec(
                conn,
                "UPDATE meta SET value = ?1 WHERE key = 'schema_version'",
                [SCHEMA_VERSION],
            )?;
        }
        Some(v) => {
            return Err(StoreError::Storage(format!(
                "database schema version {v} is not the supported version {SCHEMA_VERSION}"
            )));
        }
    }
    Ok(())
}

fn ms(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn expiry(now_ms: u64, expires_s: u32) -> u64 {
    now_ms.saturating_add(u64::from(expires_s) * 1000)
}

fn remaining_s(expires_ms: u64, now_ms: u64) -> u32 {
    let ms = expires_ms.saturating_sub(now_ms);
    u32::try_from(ms.div_ceil(1000)).unwrap_or(u32::MAX)
}

/// Applies commands in one transaction, each inside its own savepoint so a refused command
/// changes nothing, and commits. Returns each command's result; `Err` when the storage failed,
/// in which case nothing was committed. The transaction statements go through the statement
/// cache: parsing them again for every command cost more than the commands themselves.
pub fn apply_batch<'a>(
    conn: &Connection,
    commands: impl Iterator<Item = &'a Envelope>,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    apply_batch_at(conn, commands, None)
}

/// Like [`apply_batch`], and stores `position` (the replicated log position the batch brings
/// the state to) in the same transaction, so data and position never disagree.
pub fn apply_batch_at<'a>(
    conn: &Connection,
    commands: impl Iterator<Item = &'a Envelope>,
    position: Option<&[u8]>,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    apply_batch_checked(conn, commands, position, None)
}

/// Like [`apply_batch`] for a failover-cluster owner holding fencing token `token`: inside
/// the transaction, under the database's write lock, the storage's token must still be
/// `token`; if a newer owner fenced it, nothing is written and the batch fails with
/// [`StoreError::Fenced`].
pub fn apply_batch_fenced<'a>(
    conn: &Connection,
    commands: impl Iterator<Item = &'a Envelope>,
    token: u64,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    apply_batch_checked(conn, commands, None, Some(token))
}

/// The database's log sequence number: how many commands it has applied since it was
/// created (refused ones and answered retries included). Every replica of a store applies
/// the same commands, whatever their batching, so the number names the same state on all of
/// them, and it goes on across failovers without a gap: backups and restores are placed by it.
pub fn lsn(conn: &Connection) -> Result<u64, StoreError> {
    let v: Option<i64> = one(conn, "SELECT value FROM meta WHERE key = 'lsn'", [], |r| {
        r.get(0)
    })
    .optional()?;
    Ok(v.map_or(0, |v| v as u64))
}

/// Whether the transaction log is on ([`Command::SetTransactionLog`]).
pub fn txlog_on(conn: &Connection) -> Result<bool, StoreError> {
    let v: Option<i64> = one(
        conn,
        "SELECT value FROM meta WHERE key = 'txlog'",
        [],
        |r| r.get(0),
    )
    .optional()?;
    Ok(v == Some(1))
}

fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Why the store's writes are closed ([`Command::CloseWrites`]), if they are.
pub fn writes_closed(conn: &Connection) -> Result<Option<String>, StoreError> {
    let v: Option<Vec<u8>> = one(
        conn,
        "SELECT value FROM meta_blob WHERE key = 'writes_closed'",
        [],
        |r| r.get(0),
    )
    .optional()?;
    Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

/// Opens a database's writes again (a local, unreplicated change): for a copy that becomes a
/// store of its own — a log-shipping secondary brought online, a point-in-time restore into a
/// new store — whose source closed its writes before its last backup.
pub fn reopen_writes(conn: &Connection) -> Result<bool, StoreError> {
    Ok(exec(
        conn,
        "DELETE FROM meta_blob WHERE key = 'writes_closed'",
        [],
    )? > 0)
}

/// The fencing token the storage holds (0 before any owner took it).
fn fence_token(conn: &Connection) -> Result<u64, StoreError> {
    let current: Option<i64> = one(
        conn,
        "SELECT value FROM meta WHERE key = 'fence_token'",
        [],
        |r| r.get(0),
    )
    .optional()?;
    Ok(current.map_or(0, |v| v as u64))
}

/// Takes the storage for the owner of fencing token `token` (one transaction, fsynced with
/// the database): from now on writes under older tokens fail. Returns the previous token and
/// its owner; fails with [`StoreError::Fenced`] if a newer token already holds it.
pub fn take_fence(
    conn: &Connection,
    token: u64,
    owner: &str,
) -> Result<(u64, Option<String>), StoreError> {
    exec(conn, "BEGIN IMMEDIATE", [])?;
    let run = || -> Result<(u64, Option<String>), StoreError> {
        let current = fence_token(conn)?;
        if current > token {
            return Err(StoreError::Fenced { token, current });
        }
        let previous: Option<Vec<u8>> = one(
            conn,
            "SELECT value FROM meta_blob WHERE key = 'fence_owner'",
            [],
            |r| r.get(0),
        )
        .optional()?;
        exec(
            conn,
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('fence_token', ?1)",
            [token as i64],
        )?;
        exec(
            conn,
            "INSERT OR REPLACE INTO meta_blob (key, value) VALUES ('fence_owner', ?1)",
            [owner.as_bytes()],
        )?;
        exec(conn, "COMMIT", [])?;
        Ok((
            current,
            previous.map(|b| String::from_utf8_lossy(&b).into_owned()),
        ))
    };
    let outcome = run();
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

fn apply_batch_checked<'a>(
    conn: &Connection,
    commands: impl Iterator<Item = &'a Envelope>,
    position: Option<&[u8]>,
    fence: Option<u64>,
) -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
    exec(conn, "BEGIN IMMEDIATE", [])?;
    let run = || -> Result<Vec<Result<Applied, StoreError>>, StoreError> {
        if let Some(token) = fence {
            let current = fence_token(conn)?;
            if current != token {
                return Err(StoreError::Fenced { token, current });
            }
        }
        let mut results = Vec::new();
        // The transaction log, when on, keeps every command with its LSN. Whether it is on
        // is decided per command (a command turning it on or off is itself not logged), so
        // every replica logs the same commands whatever its batching.
        let mut logging = txlog_on(conn)?;
        let mut closed = writes_closed(conn)?;
        let base = lsn(conn)?;
        let at_ms = wall_ms();
        for env in commands {
            if logging {
                let bytes = postcard::to_allocvec(env)
                    .map_err(|e| StoreError::Storage(format!("cannot encode a command: {e}")))?;
                exec(
                    conn,
                    "INSERT INTO txlog (lsn, at_ms, envelope) VALUES (?1, ?2, ?3)",
                    params![(base + results.len() as u64 + 1) as i64, ms(at_ms), bytes],
                )?;
            }
            let toggles = matches!(env.cmd, Command::SetTransactionLog { .. });
            if let Some(earlier) = earlier_result(conn, env)? {
                results.push(earlier);
                continue;
            }
            if let Some(reason) = &closed
                && env.cmd.writes_data()
            {
                results.push(Err(StoreError::WritesClosed(reason.clone())));
                continue;
            }
            if let Command::CloseWrites { reason } = &env.cmd {
                closed = Some(reason.clone());
            }
            exec(conn, "SAVEPOINT command", [])?;
            let result = apply(conn, &env.cmd);
            if let Some(id) = env.request {
                remember_result(conn, id, &result)?;
            }
            match result {
                Ok(applied) => results.push(Ok(applied)),
                Err(e) if e.is_storage() => return Err(e),
                Err(e) => {
                    exec(conn, "ROLLBACK TO command", [])?;
                    results.push(Err(e));
                }
            }
            exec(conn, "RELEASE command", [])?;
            if toggles {
                logging = txlog_on(conn)?;
            }
        }
        if let Some(p) = position {
            exec(
                conn,
                "INSERT OR REPLACE INTO meta_blob (key, value) VALUES ('position', ?1)",
                [p],
            )?;
        }
        if !results.is_empty() {
            exec(
                conn,
                "UPDATE meta SET value = value + ?1 WHERE key = 'lsn'",
                [results.len() as i64],
            )?;
        }
        exec(conn, "COMMIT", [])?;
        Ok(results)
    };
    let outcome = run();
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

/// Most request outcomes remembered for retries; older ones are forgotten first.
const REMEMBERED_REQUESTS: i64 = 100_000;

/// The outcome an earlier application of this request had, if any.
fn earlier_result(
    conn: &Connection,
    env: &Envelope,
) -> Result<Option<Result<Applied, StoreError>>, StoreError> {
    let Some(id) = env.request else {
        return Ok(None);
    };
    let stored: Option<Vec<u8>> = one(
        conn,
        "SELECT result FROM requests WHERE id = ?1",
        [id.to_be_bytes().to_vec()],
        |r| r.get(0),
    )
    .optional()?;
    let Some(bytes) = stored else {
        return Ok(None);
    };
    let decoded = match bytes.split_first() {
        Some((&POSTCARD_RESULT, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        // Written by an earlier version, as JSON.
        _ => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
    };
    decoded
        .map(Some)
        .map_err(|e| StoreError::Storage(format!("stored result of a request is unreadable: {e}")))
}

/// The first byte of a remembered result in postcard (JSON, which earlier versions wrote,
/// never starts with it).
const POSTCARD_RESULT: u8 = 0;

/// Remembers a request's outcome (refusals included: a retry must be refused the same way).
/// Storage failures are not remembered: the whole batch fails with them.
fn remember_result(
    conn: &Connection,
    id: u128,
    result: &Result<Applied, StoreError>,
) -> Result<(), StoreError> {
    if matches!(result, Err(e) if e.is_storage()) {
        return Ok(());
    }
    let mut bytes = vec![POSTCARD_RESULT];
    postcard::to_io(result, &mut bytes)
        .map_err(|e| StoreError::Storage(format!("cannot encode a result: {e}")))?;
    exec(
        conn,
        "INSERT OR REPLACE INTO requests (id, result) VALUES (?1, ?2)",
        params![id.to_be_bytes().to_vec(), bytes],
    )?;
    let rowid = conn.last_insert_rowid();
    if rowid % 1000 == 0 {
        exec(
            conn,
            "DELETE FROM requests WHERE rowid <= ?1",
            [rowid - REMEMBERED_REQUESTS],
        )?;
    }
    Ok(())
}

/// Applies one command inside a transaction. On `Err` the caller rolls back what the command did.
pub fn apply(tx: &Connection, cmd: &Command) -> Result<Applied, StoreError> {
    match cmd {
        Command::AddUser { user } => {
            let n = exec(
                tx,
                "INSERT OR IGNORE INTO users (aor, username, realm, ha1_md5, ha1_sha256, created_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    user.aor,
                    user.username,
                    user.realm,
                    user.ha1_md5,
                    user.ha1_sha256,
                    ms(user.created_ms)
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Exists(format!("user {}", user.aor)));
            }
            done()
        }
        Command::SetPassword {
            aor,
            ha1_md5,
            ha1_sha256,
        } => {
            let n = exec(
                tx,
                "UPDATE users SET ha1_md5 = ?2, ha1_sha256 = ?3 WHERE aor = ?1",
                params![aor, ha1_md5, ha1_sha256],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!("user {aor}")));
            }
            done()
        }
        Command::RemoveUser { aor, now_ms } => remove_user(tx, aor, *now_ms),
        Command::Register(reg) => register(tx, reg),
        Command::Publish(p) => publish(tx, p),
        Command::Subscribe(s) => subscribe(tx, s),
        Command::Expire { now_ms } => expire(tx, *now_ms),
        Command::RecordFailover(ev) => {
            exec(
                tx,
                "INSERT INTO failovers (kind, from_server, to_server, term, detected_ms, decided_ms, first_write_ms,
                   last_acked_before, last_acked_after, lost_transactions, lost_detail, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                params![
                    ev.kind.as_str(),
                    ev.from_server,
                    ev.to_server,
                    ms(ev.term),
                    ms(ev.detected_ms),
                    ms(ev.decided_ms),
                    ms(ev.first_write_ms),
                    ms(ev.last_acked_before),
                    ms(ev.last_acked_after),
                    ms(ev.lost_transactions),
                    ev.lost_detail,
                    ev.reason
                ],
            )?;
            Ok(Applied {
                outcome: Outcome::Recorded(tx.last_insert_rowid()),
                notify: Vec::new(),
            })
        }
        Command::SetTransactionLog { on } => {
            exec(
                tx,
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('txlog', ?1)",
                [i64::from(*on)],
            )?;
            if !on {
                exec(tx, "DELETE FROM txlog", [])?;
            }
            done()
        }
        Command::TruncateTransactionLog { upto } => {
            exec(tx, "DELETE FROM txlog WHERE lsn <= ?1", [ms(*upto)])?;
            done()
        }
        Command::CloseWrites { reason } => {
            exec(
                tx,
                "INSERT OR REPLACE INTO meta_blob (key, value) VALUES ('writes_closed', ?1)",
                [reason.as_bytes()],
            )?;
            done()
        }
        Command::SetMirroringSafety { high_safety } => {
            exec(
                tx,
                "INSERT OR REPLACE INTO meta (key, value) VALUES ('mirroring_high_safety', ?1)",
                [i64::from(*high_safety)],
            )?;
            done()
        }
        Command::FailoverServing { id, first_write_ms } => {
            let n = exec(
                tx,
                "UPDATE failovers SET first_write_ms = ?2 WHERE id = ?1 AND first_write_ms = 0",
                params![id, ms(*first_write_ms)],
            )?;
            if n == 0 {
                return Err(StoreError::NotFound(format!(
                    "failover {id} awaiting its first write"
                )));
            }
            done()
        }
    }
}

fn done() -> Result<Applied, StoreError> {
    Ok(Applied {
        outcome: Outcome::Done,
        notify: Vec::new(),
    })
}

/// Marks a database whose users live in another store (a front-end pool's routing group:
/// its accounts stay in the pool's store, which the front end authenticated the request
/// against). Such a database keeps registrations, presence and subscriptions of users it has
/// no row for. Set when the database is created, before any command, on every replica alike.
pub fn set_users_elsewhere(conn: &Connection) -> Result<(), StoreError> {
    exec(
        conn,
        "INSERT OR IGNORE INTO meta (key, value) VALUES ('users_elsewhere', 1)",
        [],
    )?;
    Ok(())
}

/// Whether the database's users live in another store (see [`set_users_elsewhere`]).
pub fn users_elsewhere(conn: &Connection) -> Result<bool, StoreError> {
    Ok(one(
        conn,
        "SELECT value FROM meta WHERE key = 'users_elsewhere'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .optional()?
    .is_some_and(|v| v == 1))
}

fn require_user(tx: &Connection, aor: &str) -> Result<(), StoreError> {
    let found: Option<i64> = one(tx, "SELECT 1 FROM users WHERE aor = ?1", [aor], |r| {
        r.get(0)
    })
    .optional()?;
    // A routing group's database has no users: asked only on a miss, so a store that holds
    // its users pays nothing for the check.
    if found.is_none() && !users_elsewhere(tx)? {
        return Err(StoreError::NotFound(format!("user {aor}")));
    }
    Ok(())
}

fn remove_user(tx: &Connection, aor: &str, now_ms: u64) -> Result<Applied, StoreError> {
    require_user(tx, aor)?;
    // Watchers of this user learn that the resource is gone; its own subscriptions just end.
    let mut notify = Vec::new();
    for mut sub in subscriptions_of(tx, aor)? {
        sub.notify_cseq = sub.notify_cseq.saturating_add(1);
        let presence = Presence {
            aor: aor.to_string(),
            publications: Vec::new(),
            registered_contacts: 0,
        };
        notify.push(Notify {
            subscription: sub,
            state: SubscriptionState::Terminated {
                reason: "noresource".into(),
            },
            presence,
        });
    }
    exec(
        tx,
        "DELETE FROM subscriptions WHERE presentity = ?1 OR watcher = ?1",
        [aor],
    )?;
    exec(tx, "DELETE FROM bindings WHERE aor = ?1", [aor])?;
    exec(tx, "DELETE FROM publications WHERE aor = ?1", [aor])?;
    exec(tx, "DELETE FROM users WHERE aor = ?1", [aor])?;
    let _ = now_ms;
    Ok(Applied {
        outcome: Outcome::Done,
        notify,
    })
}

fn register(tx: &Connection, reg: &Register) -> Result<Applied, StoreError> {
    require_user(tx, &reg.aor)?;
    let before = watched_presence(tx, &reg.aor, reg.now_ms)?;
    // Expired bindings do not count and do not constrain CSeq ordering.
    exec(
        tx,
        "DELETE FROM bindings WHERE aor = ?1 AND expires_ms <= ?2",
        params![reg.aor, ms(reg.now_ms)],
    )?;
    match &reg.update {
        RegisterUpdate::RemoveAll => {
            for b in bindings(tx, &reg.aor, reg.now_ms)? {
                check_order(&b, reg)?;
            }
            exec(tx, "DELETE FROM bindings WHERE aor = ?1", [&reg.aor])?;
        }
        RegisterUpdate::Contacts(updates) => {
            for u in updates {
                let existing = binding(tx, &reg.aor, &u.contact)?;
                if let Some(b) = &existing {
                    check_order(b, reg)?;
                }
                if u.expires_s == 0 {
                    exec(
                        tx,
                        "DELETE FROM bindings WHERE aor = ?1 AND contact = ?2",
                        params![reg.aor, u.contact],
                    )?;
                } else {
                    exec(tx,
                        "INSERT INTO bindings (aor, contact, params, call_id, cseq, expires_ms, transport, source, flow, user_agent, updated_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                         ON CONFLICT (aor, contact) DO UPDATE SET params = ?3, call_id = ?4, cseq = ?5, expires_ms = ?6,
                           transport = ?7, source = ?8, flow = ?9, user_agent = ?10, updated_ms = ?11",
                        params![
                            reg.aor,
                            u.contact,
                            u.params,
                            reg.call_id,
                            reg.cseq,
                            ms(expiry(reg.now_ms, u.expires_s)),
                            reg.route.transport,
                            reg.route.source,
                            reg.route.flow,
                            reg.user_agent,
                            ms(reg.now_ms)
                        ],
                    )?;
                }
            }
        }
    }
    let after = bindings(tx, &reg.aor, reg.now_ms)?;
    let count = u32::try_from(after.len()).unwrap_or(u32::MAX);
    if count > reg.max_contacts {
        return Err(StoreError::TooManyContacts {
            aor: reg.aor.clone(),
            count,
            max: reg.max_contacts,
        });
    }
    let notify = notify_if_changed(tx, before, reg.now_ms)?;
    Ok(Applied {
        outcome: Outcome::Bindings(after),
        notify,
    })
}

fn check_order(existing: &Binding, reg: &Register) -> Result<(), StoreError> {
    if existing.call_id == reg.call_id && existing.cseq >= reg.cseq {
        return Err(StoreError::OutOfOrder {
            call_id: reg.call_id.clone(),
            cseq: reg.cseq,
            have: existing.cseq,
        });
    }
    Ok(())
}

fn publication_aor(tx: &Connection, etag: &str, aor: &str, now_ms: u64) -> Result<(), StoreError> {
    let owner: Option<String> = one(
        tx,
        "SELECT aor FROM publications WHERE etag = ?1 AND expires_ms > ?2",
        params![etag, ms(now_ms)],
        |r| r.get(0),
    )
    .optional()?;
    match owner {
        Some(o) if o == aor => Ok(()),
        _ => Err(StoreError::UnknownEtag(etag.to_string())),
    }
}

fn publish(tx: &Connection, p: &Publish) -> Result<Applied, StoreError> {
    let (aor, now_ms) = match p {
        Publish::Create { aor, now_ms, .. }
        | Publish::Refresh { aor, now_ms, .. }
        | Publish::Modify { aor, now_ms, .. }
        | Publish::Remove { aor, now_ms, .. } => (aor.as_str(), *now_ms),
    };
    require_user(tx, aor)?;
    let before = watched_presence(tx, aor, now_ms)?;
    let etag = match p {
        Publish::Create {
            aor,
            etag,
            body,
            content_type,
            expires_s,
            now_ms,
        } => {
            let n = exec(
                tx,
                "INSERT OR IGNORE INTO publications (etag, aor, body, content_type, expires_ms, updated_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    etag,
                    aor,
                    body,
                    content_type,
                    ms(expiry(*now_ms, *expires_s)),
                    ms(*now_ms)
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Exists(format!("entity-tag {etag}")));
            }
            Some(etag.clone())
        }
        Publish::Refresh {
            aor,
            etag,
            new_etag,
            expires_s,
            now_ms,
        } => {
            publication_aor(tx, etag, aor, *now_ms)?;
            exec(
                tx,
                "UPDATE publications SET etag = ?2, expires_ms = ?3 WHERE etag = ?1",
                params![etag, new_etag, ms(expiry(*now_ms, *expires_s))],
            )?;
            Some(new_etag.clone())
        }
        Publish::Modify {
            aor,
            etag,
            new_etag,
            body,
            content_type,
            expires_s,
            now_ms,
        } => {
            publication_aor(tx, etag, aor, *now_ms)?;
            exec(
                tx,
                "UPDATE publications SET etag = ?2, body = ?3, content_type = ?4, expires_ms = ?5, updated_ms = ?6 WHERE etag = ?1",
                params![
                    etag,
                    new_etag,
                    body,
                    content_type,
                    ms(expiry(*now_ms, *expires_s)),
                    ms(*now_ms)
                ],
            )?;
            Some(new_etag.clone())
        }
        Publish::Remove { aor, etag, now_ms } => {
            publication_aor(tx, etag, aor, *now_ms)?;
            exec(tx, "DELETE FROM publications WHERE etag = ?1", [etag])?;
            None
        }
    };
    let notify = notify_if_changed(tx, before, now_ms)?;
    Ok(Applied {
        outcome: Outcome::Published { etag },
        notify,
    })
}

/// A presentity's state as its watchers see it, or `None` when nobody watches it (then no
/// change needs comparing, which spares most REGISTERs the presence queries).
fn watched_presence(
    tx: &Connection,
    aor: &str,
    now_ms: u64,
) -> Result<Option<Presence>, StoreError> {
    let watched: bool = one(
        tx,
        "SELECT EXISTS (SELECT 1 FROM subscriptions WHERE presentity = ?1)",
        [aor],
        |r| r.get(0),
    )?;
    if !watched {
        return Ok(None);
    }
    presence(tx, aor, now_ms).map(Some)
}

/// Compares the presentity's state with `before` and, if it changed, counts a NOTIFY for
/// each of its watchers.
fn notify_if_changed(
    tx: &Connection,
    before: Option<Presence>,
    now_ms: u64,
) -> Result<Vec<Notify>, StoreError> {
    let Some(before) = before else {
        return Ok(Vec::new());
    };
    let after = presence(tx, &before.aor, now_ms)?;
    // Only what a watcher can see matters: bodies, and whether any contact is registered.
    let visible = |p: &Presence| {
        (
            p.publications
                .iter()
                .map(|x| (x.body.clone(), x.content_type.clone()))
                .collect::<Vec<_>>(),
            p.registered_contacts > 0,
        )
    };
    if visible(&before) == visible(&after) {
        return Ok(Vec::new());
    }
    notify_watchers(tx, &after, now_ms)
}

fn notify_watchers(
    tx: &Connection,
    presence: &Presence,
    now_ms: u64,
) -> Result<Vec<Notify>, StoreError> {
    let mut out = Vec::new();
    for mut sub in subscriptions_of(tx, &presence.aor)? {
        if sub.expires_ms <= now_ms {
            continue;
        }
        sub.notify_cseq = sub.notify_cseq.saturating_add(1);
        exec(
            tx,
            "UPDATE subscriptions SET notify_cseq = ?2 WHERE id = ?1",
            params![sub.id, sub.notify_cseq],
        )?;
        let expires_s = remaining_s(sub.expires_ms, now_ms);
        out.push(Notify {
            subscription: sub,
            state: SubscriptionState::Active { expires_s },
            presence: presence.clone(),
        });
    }
    Ok(out)
}

fn subscribe(tx: &Connection, s: &Subscribe) -> Result<Applied, StoreError> {
    match s {
        Subscribe::New {
            subscription,
            expires_s,
            now_ms,
        } => {
            require_user(tx, &subscription.presentity)?;
            let presence = presence(tx, &subscription.presentity, *now_ms)?;
            let mut sub = subscription.as_ref().clone();
            sub.notify_cseq = 1;
            if *expires_s == 0 {
                // A fetch: one NOTIFY that ends the subscription; nothing to keep.
                sub.id = 0;
                sub.expires_ms = *now_ms;
                let notify = Notify {
                    subscription: sub.clone(),
                    state: SubscriptionState::Terminated {
                        reason: "timeout".into(),
                    },
                    presence,
                };
                return Ok(Applied {
                    outcome: Outcome::Subscribed(Box::new(sub)),
                    notify: vec![notify],
                });
            }
            sub.expires_ms = expiry(*now_ms, *expires_s);
            let n = exec(tx,
                "INSERT OR IGNORE INTO subscriptions (presentity, presentity_uri, watcher, watcher_uri, call_id, watcher_tag, local_tag,
                   contact, transport, source, flow, expires_ms, notify_cseq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
                params![
                    sub.presentity,
                    sub.presentity_uri,
                    sub.watcher,
                    sub.watcher_uri,
                    sub.call_id,
                    sub.watcher_tag,
                    sub.local_tag,
                    sub.contact,
                    sub.route.transport,
                    sub.route.source,
                    sub.route.flow,
                    ms(sub.expires_ms),
                    sub.notify_cseq
                ],
            )?;
            if n == 0 {
                return Err(StoreError::Exists(format!(
                    "subscription dialog {}",
                    sub.call_id
                )));
            }
            sub.id = tx.last_insert_rowid();
            let notify = Notify {
                subscription: sub.clone(),
                state: SubscriptionState::Active {
                    expires_s: *expires_s,
                },
                presence,
            };
            Ok(Applied {
                outcome: Outcome::Subscribed(Box::new(sub)),
                notify: vec![notify],
            })
        }
        Subscribe::Refresh {
            call_id,
            watcher_tag,
            local_tag,
            contact,
            route,
            expires_s,
            now_ms,
        } => {
            let Some(mut sub) = subscription_by_dialog(tx, call_id, watcher_tag, local_tag)?
                .filter(|s| s.expires_ms > *now_ms)
            else {
                return Err(StoreError::NotFound(format!(
                    "subscription dialog {call_id}"
                )));
            };
            let presence = presence(tx, &sub.presentity, *now_ms)?;
            sub.notify_cseq = sub.notify_cseq.saturating_add(1);
            if let Some(c) = contact {
                sub.contact = c.clone();
            }
            sub.route = route.clone();
            if *expires_s == 0 {
                exec(tx, "DELETE FROM subscriptions WHERE id = ?1", [sub.id])?;
                sub.expires_ms = *now_ms;
                let notify = Notify {
                    subscription: sub.clone(),
                    state: SubscriptionState::Terminated {
                        reason: "timeout".into(),
                    },
                    presence,
                };
                return Ok(Applied {
                    outcome: Outcome::Subscribed(Box::new(sub)),
                    notify: vec![notify],
                });
            }
            sub.expires_ms = expiry(*now_ms, *expires_s);
            exec(
                tx,
                "UPDATE subscriptions SET contact = ?2, transport = ?3, source = ?4, flow = ?5, expires_ms = ?6, notify_cseq = ?7 WHERE id = ?1",
                params![
                    sub.id,
                    sub.contact,
                    sub.route.transport,
                    sub.route.source,
                    sub.route.flow,
                    ms(sub.expires_ms),
                    sub.notify_cseq
                ],
            )?;
            let notify = Notify {
                subscription: sub.clone(),
                state: SubscriptionState::Active {
                    expires_s: *expires_s,
                },
                presence,
            };
            Ok(Applied {
                outcome: Outcome::Subscribed(Box::new(sub)),
                notify: vec![notify],
            })
        }
        Subscribe::End { id } => {
            exec(tx, "DELETE FROM subscriptions WHERE id = ?1", [id])?;
            done()
        }
    }
}

fn expire(tx: &Connection, now_ms: u64) -> Result<Applied, StoreError> {
    let now = ms(now_ms);
    let mut notify = Vec::new();
    // Subscriptions that ran out get a final NOTIFY.
    let expired_subs: Vec<Subscription> = {
        let mut stmt = tx.prepare_cached(&format!(
            "SELECT {SUB_COLS} FROM subscriptions WHERE expires_ms <= ?1 ORDER BY id"
        ))?;
        let rows = stmt.query_map([now], row_subscription)?;
        rows.collect::<Result<_, _>>()?
    };
    for mut sub in expired_subs {
        exec(tx, "DELETE FROM subscriptions WHERE id = ?1", [sub.id])?;
        sub.notify_cseq = sub.notify_cseq.saturating_add(1);
        let presence = presence(tx, &sub.presentity, now_ms)?;
        notify.push(Notify {
            subscription: sub,
            state: SubscriptionState::Terminated {
                reason: "timeout".into(),
            },
            presence,
        });
    }
    // Presentities whose bindings or publications ran out may look different to watchers.
    let changed: Vec<String> = {
        let mut stmt = tx.prepare_cached(
            "SELECT aor FROM bindings WHERE expires_ms <= ?1 UNION SELECT aor FROM publications WHERE expires_ms <= ?1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([now], |r| r.get(0))?;
        rows.collect::<Result<_, _>>()?
    };
    for aor in changed {
        // Rows still present were visible to watchers (the sweep is what removes them), so the
        // state before is every row, expired or not.
        let before = watched_presence(tx, &aor, 0)?;
        exec(
            tx,
            "DELETE FROM bindings WHERE aor = ?1 AND expires_ms <= ?2",
            params![aor, now],
        )?;
        exec(
            tx,
            "DELETE FROM publications WHERE aor = ?1 AND expires_ms <= ?2",
            params![aor, now],
        )?;
        notify.extend(notify_if_changed(tx, before, now_ms)?);
    }
    Ok(Applied {
        outcome: Outcome::Done,
        notify,
    })
}

// ---------------------------------------------------------------------------------------------
// Queries. They take a plain connection, so they run on readers and inside `apply` alike.

const BINDING_COLS: &str = "aor, contact, params, call_id, cseq, expires_ms, transport, source, flow, user_agent, updated_ms";

fn row_binding(r: &rusqlite::Row<'_>) -> rusqlite::Result<Binding> {
    Ok(Binding {
        aor: r.get(0)?,
        contact: r.get(1)?,
        params: r.get(2)?,
        call_id: r.get(3)?,
        cseq: r.get(4)?,
        expires_ms: r.get::<_, i64>(5)?.max(0) as u64,
        route: Route {
            transport: r.get(6)?,
            source: r.get(7)?,
            flow: r.get(8)?,
        },
        user_agent: r.get(9)?,
        updated_ms: r.get::<_, i64>(10)?.max(0) as u64,
    })
}

const SUB_COLS: &str = "id, presentity, presentity_uri, watcher, watcher_uri, call_id, watcher_tag, local_tag, contact, transport, source, flow, expires_ms, notify_cseq";

fn row_subscription(r: &rusqlite::Row<'_>) -> rusqlite::Result<Subscription> {
    Ok(Subscription {
        id: r.get(0)?,
        presentity: r.get(1)?,
        presentity_uri: r.get(2)?,
        watcher: r.get(3)?,
        watcher_uri: r.get(4)?,
        call_id: r.get(5)?,
        watcher_tag: r.get(6)?,
        local_tag: r.get(7)?,
        contact: r.get(8)?,
        route: Route {
            transport: r.get(9)?,
            source: r.get(10)?,
            flow: r.get(11)?,
        },
        expires_ms: r.get::<_, i64>(12)?.max(0) as u64,
        notify_cseq: r.get(13)?,
    })
}

/// Empties the database (every table), for a replica about to be reseeded from a snapshot.
pub fn reset(conn: &Connection) -> Result<(), StoreError> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         DELETE FROM users; DELETE FROM bindings; DELETE FROM publications; DELETE FROM subscriptions;
         DELETE FROM failovers; DELETE FROM requests; DELETE FROM meta_blob;
         COMMIT;",
    )?;
    Ok(())
}

/// The replicated log position stored with the data, if any.
pub fn position(conn: &Connection) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(one(
        conn,
        "SELECT value FROM meta_blob WHERE key = 'position'",
        [],
        |r| r.get(0),
    )
    .optional()?)
}

/// A mirroring store's safety level as last set while serving (`None`: as the topology says).
pub fn mirroring_high_safety(conn: &Connection) -> Result<Option<bool>, StoreError> {
    let v: Option<i64> = one(
        conn,
        "SELECT value FROM meta WHERE key = 'mirroring_high_safety'",
        [],
        |r| r.get(0),
    )
    .optional()?;
    Ok(v.map(|v| v != 0))
}

/// Runs a query.
pub fn query(conn: &Connection, q: &Query) -> Result<QueryResult, StoreError> {
    Ok(match q {
        Query::User { aor } => QueryResult::User(user(conn, aor)?),
        Query::Users { now_ms } => QueryResult::Users(users(conn, *now_ms)?),
        Query::Bindings { aor, now_ms } => QueryResult::Bindings(bindings(conn, aor, *now_ms)?),
        Query::Watchers { aor } => QueryResult::Subscriptions(subscriptions_of(conn, aor)?),
        Query::Presence { aor, now_ms } => QueryResult::Presence(presence(conn, aor, *now_ms)?),
        Query::SubscriptionByDialog {
            call_id,
            watcher_tag,
            local_tag,
        } => QueryResult::Subscription(
            subscription_by_dialog(conn, call_id, watcher_tag, local_tag)?.map(Box::new),
        ),
        Query::NextExpiry => QueryResult::NextExpiry(next_expiry(conn)?),
        Query::Failovers { limit } => QueryResult::Failovers(failovers(conn, *limit)?),
    })
}

/// The most recent failovers, newest first.
pub fn failovers(conn: &Connection, limit: u32) -> Result<Vec<FailoverEvent>, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, from_server, to_server, term, detected_ms, decided_ms, first_write_ms,
                last_acked_before, last_acked_after, lost_transactions, lost_detail, reason
         FROM failovers ORDER BY id DESC LIMIT ?1",
    )?;
    let u = |v: i64| v.max(0) as u64;
    let rows = stmt.query_map([limit], |r| {
        let kind: String = r.get(1)?;
        Ok(FailoverEvent {
            id: r.get(0)?,
            kind: match kind.as_str() {
                "planned" => FailoverKind::Planned,
                "forced" => FailoverKind::Forced,
                _ => FailoverKind::Automatic,
            },
            from_server: r.get(2)?,
            to_server: r.get(3)?,
            term: u(r.get(4)?),
            detected_ms: u(r.get(5)?),
            decided_ms: u(r.get(6)?),
            first_write_ms: u(r.get(7)?),
            last_acked_before: u(r.get(8)?),
            last_acked_after: u(r.get(9)?),
            lost_transactions: u(r.get(10)?),
            lost_detail: r.get(11)?,
            reason: r.get(12)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A user with its credentials.
pub fn user(conn: &Connection, aor: &str) -> Result<Option<User>, StoreError> {
    Ok(one(
        conn,
        "SELECT aor, username, realm, ha1_md5, ha1_sha256, created_ms FROM users WHERE aor = ?1",
        [aor],
        |r| {
            Ok(User {
                aor: r.get(0)?,
                username: r.get(1)?,
                realm: r.get(2)?,
                ha1_md5: r.get(3)?,
                ha1_sha256: r.get(4)?,
                created_ms: r.get::<_, i64>(5)?.max(0) as u64,
            })
        },
    )
    .optional()?)
}

/// Every user, by AOR, with its count of unexpired bindings.
///
/// A routing group's database ([`set_users_elsewhere`]) has no users: it lists each AOR that
/// has bindings, with their count (and no creation time).
pub fn users(conn: &Connection, now_ms: u64) -> Result<Vec<UserSummary>, StoreError> {
    if users_elsewhere(conn)? {
        let mut stmt = conn.prepare(
            "SELECT aor, count(*) FROM bindings WHERE expires_ms > ?1 GROUP BY aor ORDER BY aor",
        )?;
        let rows = stmt.query_map([ms(now_ms)], |r| {
            Ok(UserSummary {
                aor: r.get(0)?,
                created_ms: 0,
                bindings: r.get(1)?,
            })
        })?;
        return Ok(rows.collect::<Result<_, _>>()?);
    }
    let mut stmt = conn.prepare(
        "SELECT u.aor, u.created_ms, (SELECT count(*) FROM bindings b WHERE b.aor = u.aor AND b.expires_ms > ?1)
         FROM users u ORDER BY u.aor",
    )?;
    let rows = stmt.query_map([ms(now_ms)], |r| {
        Ok(UserSummary {
            aor: r.get(0)?,
            created_ms: r.get::<_, i64>(1)?.max(0) as u64,
            bindings: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The unexpired bindings of an AOR, by contact.
pub fn bindings(conn: &Connection, aor: &str, now_ms: u64) -> Result<Vec<Binding>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {BINDING_COLS} FROM bindings WHERE aor = ?1 AND expires_ms > ?2 ORDER BY contact"
    ))?;
    let rows = stmt.query_map(params![aor, ms(now_ms)], row_binding)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn binding(conn: &Connection, aor: &str, contact: &str) -> Result<Option<Binding>, StoreError> {
    Ok(one(
        conn,
        &format!("SELECT {BINDING_COLS} FROM bindings WHERE aor = ?1 AND contact = ?2"),
        params![aor, contact],
        row_binding,
    )
    .optional()?)
}

/// A presentity's unexpired publications and registration count.
pub fn presence(conn: &Connection, aor: &str, now_ms: u64) -> Result<Presence, StoreError> {
    let mut stmt = conn.prepare_cached(
        "SELECT etag, body, content_type, expires_ms, updated_ms FROM publications
         WHERE aor = ?1 AND expires_ms > ?2 ORDER BY updated_ms, etag",
    )?;
    let publications = stmt
        .query_map(params![aor, ms(now_ms)], |r| {
            Ok(Publication {
                etag: r.get(0)?,
                body: r.get(1)?,
                content_type: r.get(2)?,
                expires_ms: r.get::<_, i64>(3)?.max(0) as u64,
                updated_ms: r.get::<_, i64>(4)?.max(0) as u64,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let registered_contacts: u32 = one(
        conn,
        "SELECT count(*) FROM bindings WHERE aor = ?1 AND expires_ms > ?2",
        params![aor, ms(now_ms)],
        |r| r.get(0),
    )?;
    Ok(Presence {
        aor: aor.to_string(),
        publications,
        registered_contacts,
    })
}

/// The subscriptions watching a presentity, by id.
pub fn subscriptions_of(
    conn: &Connection,
    presentity: &str,
) -> Result<Vec<Subscription>, StoreError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUB_COLS} FROM subscriptions WHERE presentity = ?1 ORDER BY id"
    ))?;
    let rows = stmt.query_map([presentity], row_subscription)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The subscription of a dialog.
pub fn subscription_by_dialog(
    conn: &Connection,
    call_id: &str,
    watcher_tag: &str,
    local_tag: &str,
) -> Result<Option<Subscription>, StoreError> {
    Ok(one(conn,
            &format!("SELECT {SUB_COLS} FROM subscriptions WHERE call_id = ?1 AND watcher_tag = ?2 AND local_tag = ?3"),
            params![call_id, watcher_tag, local_tag],
            row_subscription,
        )
        .optional()?)
}

/// The earliest expiry of any binding, publication or subscription.
pub fn next_expiry(conn: &Connection) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = one(
        conn,
        "SELECT min(m) FROM (SELECT min(expires_ms) AS m FROM bindings
                           UNION ALL SELECT min(expires_ms) FROM publications
                           UNION ALL SELECT min(expires_ms) FROM subscriptions)",
        [],
        |r| r.get(0),
    )?;
    Ok(v.map(|v| v.max(0) as u64))
}
