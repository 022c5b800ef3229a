//! Tandem's admin HTTP API. Every route needs the admin token (`Authorization: Bearer
//! <token>`); a request without it gets 401 and changes nothing.
//!
//! | route | does |
//! |---|---|
//! | `GET /api/v1/server` | this server: name, roles, addresses, pid, version |
//! | `GET /api/v1/users` | every user (no secrets) |
//! | `POST /api/v1/users` `{aor, password}` | provisions a user (201, 409 if it exists) |
//! | `DELETE /api/v1/users/{aor}` | removes a user, its bindings, publications and subscriptions |
//! | `PUT /api/v1/users/{aor}/password` `{password}` | changes a password |
//! | `GET /api/v1/registrations/{aor}` | the user's current bindings |
//! | `GET /api/v1/presence/{aor}` | the user's publications and the subscriptions to it |
//! | `GET /api/v1/pools/{pool}/status` | a front-end pool's fabric state (servers, routing groups) |
//! | `POST /api/v1/pools/{pool}/groups/{id}/reset` `{accept_data_loss}` | recovers a group that lost its majority for good |
//! | `POST /api/v1/pools/{pool}/start` `{wait_s}` | waits for every group to have a primary; says what is missing |
//! | `POST /api/v1/server/drain` | this pool server moves its primaries away and takes no new clients |
//! | `POST /api/v1/server/resume` | ends a drain |
//! | `GET /metrics` | Prometheus text format |
//!
//! Passwords never reach the store: it keeps the digest HA1 values only.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sip::digest::{Algorithm, ha1};
use std::fmt::Write;
use std::sync::Arc;
use store::{Command, Store, StoreError, User};
use subtle::ConstantTimeEq;

/// What `GET /api/v1/server` reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    pub server: String,
    pub pid: u32,
    pub version: String,
    pub roles: Vec<String>,
    pub sip_udp: Option<String>,
    pub sip_tcp: Option<String>,
    pub admin: String,
}

/// A user as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UserRow {
    pub aor: String,
    pub created_ms: u64,
    pub bindings: u32,
}

/// A binding as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BindingRow {
    pub contact: String,
    pub expires_in_s: u64,
    pub transport: String,
    pub source: String,
    pub user_agent: String,
    pub call_id: String,
    pub cseq: u32,
}

/// `GET /api/v1/presence/{aor}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PresenceRow {
    pub aor: String,
    pub publications: Vec<PublicationRow>,
    pub watchers: Vec<WatcherRow>,
}

/// A publication as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PublicationRow {
    pub etag: String,
    pub expires_in_s: u64,
    pub bytes: usize,
}

/// A subscription to a presentity as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WatcherRow {
    pub watcher: String,
    pub call_id: String,
    pub expires_in_s: u64,
}

/// `POST /api/v1/users`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewUser {
    pub aor: String,
    pub password: String,
}

/// `PUT /api/v1/users/{aor}/password`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NewPassword {
    pub password: String,
}

/// Error body of every failed request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiError {
    pub error: String,
}

/// What the API serves from.
pub struct AdminState {
    pub info: ServerInfo,
    /// The SIP domain; AORs outside it are refused.
    pub domain: String,
    pub token: String,
    /// The store users live in, when this server has one.
    pub store: Option<Store>,
    /// The front end, when this server has that role (for metrics).
    pub frontend: Option<Arc<frontend::Core>>,
    /// Clients of the topology's replicated stores, by name.
    pub stores: std::collections::BTreeMap<String, store::client::StoreClient>,
    /// Every server's rpc address, from the topology (to add a replica by server name).
    pub rpc_addrs: std::collections::BTreeMap<String, String>,
    /// The standalone stores this server holds: name → database file and handle (for
    /// backups).
    pub local_stores: std::collections::BTreeMap<String, (std::path::PathBuf, Store)>,
    /// The log-shipping secondaries this server holds (their copy and restore jobs).
    pub logship: Vec<Arc<store::logship::Secondary>>,
    /// The ends of log-shipping links this server serves (its secondaries among them): the
    /// primary's side of a link, while the link's roles make the end its primary.
    pub logship_ends: Vec<(store::logship::PrimaryLink, store::logship::Source)>,
    /// Each store's backup share, when a log-shipping link names one: the default of
    /// `POST /api/v1/stores/{name}/backup`.
    pub backup_shares: std::collections::BTreeMap<String, std::path::PathBuf>,
    /// The replicas of replicated stores this server holds (`server drain` moves their
    /// primaries away too).
    pub store_nodes: Vec<Arc<store::node::StoreNode>>,
}

/// The router of the admin API; every route is behind the token check.
pub fn router(state: Arc<AdminState>) -> Router {
    Router::new()
        .route("/api/v1/server", get(server))
        .route("/api/v1/users", get(list_users).post(add_user))
        .route("/api/v1/users/{aor}", axum::routing::delete(remove_user))
        .route("/api/v1/users/{aor}/password", put(set_password))
        .route("/api/v1/registrations/{aor}", get(registrations))
        .route("/api/v1/presence/{aor}", get(presence))
        .route("/api/v1/pools/{pool}/status", get(pool_status))
        .route(
            "/api/v1/pools/{pool}/groups/{id}/reset",
            axum::routing::post(reset_group),
        )
        .route(
            "/api/v1/pools/{pool}/start",
            axum::routing::post(pool_start),
        )
        .route("/api/v1/server/drain", axum::routing::post(drain))
        .route("/api/v1/server/resume", axum::routing::post(resume))
        .route("/api/v1/stores", get(list_stores))
        .route("/api/v1/logship", get(logship_status))
        .route(
            "/api/v1/logship/{link}/failover",
            axum::routing::post(logship_failover),
        )
        .route(
            "/api/v1/logship/{link}/reverse",
            axum::routing::post(logship_reverse),
        )
        .route("/api/v1/logship/{link}/users", get(standby_users))
        .route("/api/v1/stores/{name}/status", get(store_status))
        .route(
            "/api/v1/stores/{name}/failover",
            axum::routing::post(store_failover),
        )
        .route(
            "/api/v1/stores/{name}/force-service",
            axum::routing::post(store_force),
        )
        .route(
            "/api/v1/stores/{name}/mirroring",
            axum::routing::post(store_mirroring),
        )
        .route(
            "/api/v1/stores/{name}/backup",
            axum::routing::post(store_backup),
        )
        .route(
            "/api/v1/stores/{name}/{op}",
            axum::routing::post(store_member),
        )
        .route("/metrics", get(metrics))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ))
        .with_state(state)
}

/// Serves the API on a bound listener until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// A failed request: its status and a message for the operator.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { error: self.1 })).into_response()
    }
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Failure {
        match e {
            StoreError::NotFound(what) => {
                Failure(StatusCode::NOT_FOUND, format!("{what} not found"))
            }
            StoreError::Exists(what) => {
                Failure(StatusCode::CONFLICT, format!("{what} already exists"))
            }
            other => Failure(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        }
    }
}

fn bad_request(msg: impl Into<String>) -> Failure {
    Failure(StatusCode::BAD_REQUEST, msg.into())
}

async fn require_token(
    State(s): State<Arc<AdminState>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if given.is_empty() || !bool::from(given.as_bytes().ct_eq(s.token.as_bytes())) {
        return Failure(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin token".into(),
        )
        .into_response();
    }
    next.run(request).await
}

impl AdminState {
    fn store(&self) -> Result<&Store, Failure> {
        self.store
            .as_ref()
            .or_else(|| self.logship.iter().find_map(|l| l.promoted()))
            .ok_or_else(|| {
                Failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("server {} holds no user store", self.info.server),
                )
            })
    }

    /// This server's part of pool `name`.
    fn pool(&self, name: &str) -> Result<&Arc<frontend::pool::PoolMember>, Failure> {
        match self.frontend.as_ref().and_then(|f| f.pool.as_ref()) {
            Some(p) if p.pool == name => Ok(p),
            Some(p) => Err(Failure(
                StatusCode::NOT_FOUND,
                format!(
                    "server {} serves pool {}, not {name}: ask a server of {name}",
                    self.info.server, p.pool
                ),
            )),
            None => Err(Failure(
                StatusCode::NOT_FOUND,
                format!(
                    "server {} serves no pool with routing groups (a pool of one server keeps \
                     its users' data in its store)",
                    self.info.server
                ),
            )),
        }
    }

    /// Tells the other servers of this server's pool that `aor`'s account changed.
    async fn forget_user_in_pool(&self, aor: &str) {
        if let Some(pool) = self.frontend.as_ref().and_then(|f| f.pool.as_ref()) {
            pool.forget_user_everywhere(aor).await;
        }
    }

    /// The store holding `aor`'s registrations, presence and subscriptions: its routing
    /// group when this server is a front end of a pool with groups, else the user store.
    fn data_store(&self, aor: &str) -> Result<&Store, Failure> {
        match self.frontend.as_ref().and_then(|f| f.pool.as_ref()) {
            Some(pool) => Ok(pool.store_of(aor)),
            None => self.store(),
        }
    }

    fn aor(&self, input: &str) -> Result<(String, String), Failure> {
        normalize_aor(input, &self.domain).map_err(bad_request)
    }

    /// The digest HA1 values of a password, checked for length and control characters.
    fn ha1s(&self, username: &str, password: &str) -> Result<(String, String), Failure> {
        if password.is_empty() || password.len() > 256 || password.chars().any(char::is_control) {
            return Err(bad_request(
                "the password must be 1–256 characters without control characters",
            ));
        }
        Ok((
            ha1(Algorithm::Md5, username, &self.domain, password),
            ha1(Algorithm::Sha256, username, &self.domain, password),
        ))
    }
}

/// Normalizes `alice`, `alice@example.com` or `sip:alice@example.com` to the AOR, refusing
/// other domains and user parts that are not valid in a SIP URI.
pub fn normalize_aor(input: &str, domain: &str) -> Result<(String, String), String> {
    let input = input.trim();
    if input.is_empty() {
        return Err("the user address is empty".into());
    }
    let text = if input.starts_with("sip:") || input.starts_with("sips:") {
        input.to_string()
    } else if input.contains('@') {
        format!("sip:{input}")
    } else {
        format!("sip:{input}@{domain}")
    };
    let uri = sip::Uri::parse(&text).map_err(|e| format!("'{input}' is not a SIP address: {e}"))?;
    let Some(user) = uri.user.clone() else {
        return Err(format!("'{input}' has no user part"));
    };
    if !uri.host.eq_ignore_ascii_case(domain) {
        return Err(format!("'{input}' is not in this server's domain {domain}"));
    }
    if uri.port.is_some()
        || !uri.params.0.is_empty()
        || uri.headers.is_some()
        || uri.password.is_some()
    {
        return Err(format!("'{input}' must be a plain user@domain address"));
    }
    if user.len() > 64
        || !user
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'+".contains(&b))
    {
        return Err(format!(
            "user name '{user}' must be 1–64 letters, digits or -_.!~*'+"
        ));
    }
    Ok((uri.aor(), user))
}

type Body<T> = Result<Json<T>, axum::extract::rejection::JsonRejection>;

async fn server(State(s): State<Arc<AdminState>>) -> Json<ServerInfo> {
    Json(s.info.clone())
}

async fn list_users(State(s): State<Arc<AdminState>>) -> Result<Json<Vec<UserRow>>, Failure> {
    let now = frontend::now_ms();
    let users = s.store()?.users(now).await?;
    // In a pool with routing groups, the bindings are in the groups: each lists its AORs.
    let mut counts = std::collections::HashMap::new();
    if let Some(pool) = s.frontend.as_ref().and_then(|f| f.pool.as_ref()) {
        for group in &pool.groups {
            for u in group.users(now).await? {
                counts.insert(u.aor, u.bindings);
            }
        }
    }
    Ok(Json(
        users
            .into_iter()
            .map(|u| UserRow {
                bindings: counts.get(&u.aor).copied().unwrap_or(u.bindings),
                aor: u.aor,
                created_ms: u.created_ms,
            })
            .collect(),
    ))
}

async fn add_user(
    State(s): State<Arc<AdminState>>,
    body: Body<NewUser>,
) -> Result<Response, Failure> {
    let Json(new) =
        body.map_err(|_| bad_request("expected a JSON body {\"aor\": ..., \"password\": ...}"))?;
    let (aor, username) = s.aor(&new.aor)?;
    let (ha1_md5, ha1_sha256) = s.ha1s(&username, &new.password)?;
    let created_ms = frontend::now_ms();
    let user = User {
        aor: aor.clone(),
        username,
        realm: s.domain.clone(),
        ha1_md5,
        ha1_sha256,
        created_ms,
    };
    s.store()?.apply(Command::AddUser { user }).await?;
    Ok((
        StatusCode::CREATED,
        Json(UserRow {
            aor,
            created_ms,
            bindings: 0,
        }),
    )
        .into_response())
}

async fn remove_user(
    State(s): State<Arc<AdminState>>,
    Path(aor): Path<String>,
) -> Result<StatusCode, Failure> {
    let (aor, _) = s.aor(&aor)?;
    s.store()?
        .apply(Command::RemoveUser {
            aor: aor.clone(),
            now_ms: frontend::now_ms(),
        })
        .await?;
    s.forget_user_in_pool(&aor).await;
    if let Some(f) = s.frontend.as_ref().filter(|f| f.pool.is_some()) {
        // Its registrations, presence and subscriptions live in its routing group; watchers
        // hear that it is gone.
        let removed = s
            .data_store(&aor)?
            .apply(Command::RemoveUser {
                aor: aor.clone(),
                now_ms: frontend::now_ms(),
            })
            .await;
        match removed {
            Ok(applied) => frontend::send_notifies(f, applied.notify).await,
            Err(e) => {
                return Err(Failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{aor} is removed and can no longer sign in, but its routing group did \
                         not drop its registrations ({e}): they expire by themselves, or run \
                         the removal again"
                    ),
                ));
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn set_password(
    State(s): State<Arc<AdminState>>,
    Path(aor): Path<String>,
    body: Body<NewPassword>,
) -> Result<StatusCode, Failure> {
    let Json(new) = body.map_err(|_| bad_request("expected a JSON body {\"password\": ...}"))?;
    let (aor, username) = s.aor(&aor)?;
    let (ha1_md5, ha1_sha256) = s.ha1s(&username, &new.password)?;
    s.store()?
        .apply(Command::SetPassword {
            aor: aor.clone(),
            ha1_md5,
            ha1_sha256,
        })
        .await?;
    s.forget_user_in_pool(&aor).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn registrations(
    State(s): State<Arc<AdminState>>,
    Path(aor): Path<String>,
) -> Result<Json<Vec<BindingRow>>, Failure> {
    let (aor, _) = s.aor(&aor)?;
    let store = s.store()?;
    if store.user(&aor).await?.is_none() {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("user {aor} not found"),
        ));
    }
    let now = frontend::now_ms();
    let rows = s
        .data_store(&aor)?
        .bindings(&aor, now)
        .await?
        .into_iter()
        .map(|b| BindingRow {
            contact: b.contact,
            expires_in_s: b.expires_ms.saturating_sub(now).div_ceil(1000),
            transport: b.route.transport,
            source: b.route.source,
            user_agent: b.user_agent,
            call_id: b.call_id,
            cseq: b.cseq,
        })
        .collect();
    Ok(Json(rows))
}

async fn presence(
    State(s): State<Arc<AdminState>>,
    Path(aor): Path<String>,
) -> Result<Json<PresenceRow>, Failure> {
    let (aor, _) = s.aor(&aor)?;
    if s.store()?.user(&aor).await?.is_none() {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("user {aor} not found"),
        ));
    }
    let now = frontend::now_ms();
    let data = s.data_store(&aor)?;
    let presence = data.presence(&aor, now).await?;
    let watchers = data.watchers(&aor).await?;
    Ok(Json(PresenceRow {
        publications: presence
            .publications
            .into_iter()
            .map(|p| PublicationRow {
                etag: p.etag,
                expires_in_s: p.expires_ms.saturating_sub(now).div_ceil(1000),
                bytes: p.body.len(),
            })
            .collect(),
        watchers: watchers
            .into_iter()
            .filter(|w| w.expires_ms > now)
            .map(|w| WatcherRow {
                watcher: w.watcher,
                call_id: w.call_id,
                expires_in_s: w.expires_ms.saturating_sub(now).div_ceil(1000),
            })
            .collect(),
        aor,
    }))
}

/// `POST /api/v1/pools/{pool}/start`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StartBody {
    #[serde(default)]
    pub wait_s: u64,
}

async fn pool_start(
    State(s): State<Arc<AdminState>>,
    Path(pool): Path<String>,
    body: Body<StartBody>,
) -> Result<Json<frontend::pool::StartReport>, Failure> {
    let Json(req) = body.map_err(|_| bad_request("expected a JSON body {\"wait_s\": seconds}"))?;
    if req.wait_s > 600 {
        return Err(bad_request("wait_s is at most 600"));
    }
    let member = s.pool(&pool)?;
    Ok(Json(
        member
            .start(std::time::Duration::from_secs(req.wait_s))
            .await,
    ))
}

/// `POST /api/v1/pools/{pool}/groups/{id}/reset`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResetBody {
    #[serde(default)]
    pub accept_data_loss: bool,
}

async fn reset_group(
    State(s): State<Arc<AdminState>>,
    Path((pool, id)): Path<(String, String)>,
    body: Body<ResetBody>,
) -> Result<Json<frontend::pool::ResetReport>, Failure> {
    let Json(req) =
        body.map_err(|_| bad_request("expected a JSON body {\"accept_data_loss\": bool}"))?;
    let id: u32 = id
        .parse()
        .map_err(|_| bad_request(format!("group {id:?} is not a group number")))?;
    use frontend::pool::ResetRefusal;
    match s.pool(&pool)?.reset_group(id, req.accept_data_loss).await {
        Ok(report) => Ok(Json(report)),
        Err(e @ ResetRefusal::NoSuchGroup(_)) => Err(Failure(StatusCode::NOT_FOUND, e.to_string())),
        Err(e @ (ResetRefusal::Serving(_) | ResetRefusal::NoReplica(_))) => {
            Err(Failure(StatusCode::CONFLICT, e.to_string()))
        }
        Err(e @ ResetRefusal::Failed(_)) => {
            Err(Failure(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
        }
    }
}

/// `POST /api/v1/server/drain`: every primary this server holds — routing groups and
/// replicated stores — moves to a synchronized secondary, and the server takes no new clients.
async fn drain(
    State(s): State<Arc<AdminState>>,
) -> Result<Json<frontend::pool::DrainReport>, Failure> {
    let pool = s.frontend.as_ref().and_then(|f| f.pool.as_ref());
    if pool.is_none() && s.store_nodes.is_empty() {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!(
                "server {} leads no routing group and no store replica: there is nothing to \
                 drain (stop it)",
                s.info.server
            ),
        ));
    }
    let started = std::time::Instant::now();
    let mut report = match pool {
        Some(p) => p.drain().await,
        None => frontend::pool::DrainReport {
            server: s.info.server.clone(),
            ..Default::default()
        },
    };
    for node in &s.store_nodes {
        let was_primary = node.is_primary();
        match node.step_down(&Default::default()).await {
            Ok(Some(to)) if was_primary && to != s.info.server => {
                report.stores_moved.push((node.name().to_string(), to))
            }
            Ok(_) if was_primary => report.stores_failed.push((
                node.name().to_string(),
                "no synchronized secondary took over".into(),
            )),
            Ok(_) => {}
            Err(e) => report
                .stores_failed
                .push((node.name().to_string(), e.to_string())),
        }
    }
    report.still_primary += s.store_nodes.iter().filter(|n| n.is_primary()).count() as u32;
    report.took_ms = started.elapsed().as_millis() as u64;
    Ok(Json(report))
}

/// `POST /api/v1/server/resume`.
async fn resume(State(s): State<Arc<AdminState>>) -> Result<StatusCode, Failure> {
    if let Some(p) = s.frontend.as_ref().and_then(|f| f.pool.as_ref()) {
        p.resume();
    }
    for node in &s.store_nodes {
        node.resume_elections();
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/pools/{pool}/status`, on a server of that pool.
async fn pool_status(
    State(s): State<Arc<AdminState>>,
    Path(pool): Path<String>,
) -> Result<Json<frontend::pool::PoolStatus>, Failure> {
    let member = s.pool(&pool)?;
    let mut status = member.status().await;
    if status.groups.iter().any(|g| !g.serving) {
        // Which users cannot sign in now: the pool's store knows them all.
        if let Ok(store) = s.store() {
            match store.users(frontend::now_ms()).await {
                Ok(users) => {
                    let aors: Vec<String> = users.into_iter().map(|u| u.aor).collect();
                    status.affected_users = Some(member.affected(&status, &aors));
                }
                Err(e) => tracing::warn!(error = %e, "cannot list the users a pool outage affects"),
            }
        }
    }
    Ok(Json(status))
}

impl From<store::proto::Refusal> for Failure {
    fn from(r: store::proto::Refusal) -> Failure {
        use store::proto::Refusal;
        match r {
            Refusal::Store(e) => Failure::from(e),
            Refusal::Refused(why) => Failure(StatusCode::CONFLICT, why),
            other => Failure(StatusCode::SERVICE_UNAVAILABLE, other.to_string()),
        }
    }
}

impl AdminState {
    fn store_client(&self, name: &str) -> Result<&store::client::StoreClient, Failure> {
        self.stores.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.stores.keys().map(String::as_str).collect();
            Failure(
                StatusCode::NOT_FOUND,
                format!(
                    "no replicated store named {name} (replicated stores: {})",
                    known.join(", ")
                ),
            )
        })
    }
}

/// A replicated store in `GET /api/v1/stores`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoreRow {
    pub store: String,
    pub replicas: Vec<String>,
}

async fn list_stores(State(s): State<Arc<AdminState>>) -> Json<Vec<StoreRow>> {
    Json(
        s.stores
            .iter()
            .map(|(name, c)| StoreRow {
                store: name.clone(),
                replicas: c.replicas().iter().map(|r| r.server.clone()).collect(),
            })
            .collect(),
    )
}

/// The status as the primary reports it; without a primary, each replica's own view merged
/// (roles as each replica sees itself, no lag figures).
async fn store_status(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
) -> Result<Json<store::proto::StoreStatus>, Failure> {
    let client = s.store_client(&name)?;
    let mut quick = client.clone();
    quick.deadline = std::time::Duration::from_secs(3);
    quick.attempt = std::time::Duration::from_secs(1);
    match quick.status().await {
        Ok(st) if st.primary.is_some() => return Ok(Json(st)),
        Ok(_) | Err(_) => {}
    }
    let mut merged: Option<store::proto::StoreStatus> = None;
    let mut replicas = Vec::new();
    for r in client.replicas() {
        let view = match quick.ask(&r.addr, "status", Vec::new()).await {
            Ok(bytes) => store::proto::decode::<store::proto::Reply<store::proto::StoreStatus>>(
                &bytes, "status",
            )
            .ok()
            .and_then(Result::ok),
            Err(_) => None,
        };
        match view {
            Some(v) => {
                if let Some(me) = v.replicas.iter().find(|x| x.server == r.server) {
                    replicas.push(me.clone());
                }
                if merged.as_ref().is_none_or(|m| v.term > m.term) {
                    merged = Some(v);
                }
            }
            None => replicas.push(store::proto::ReplicaStatus {
                server: r.server.clone(),
                role: "unreachable".into(),
                commit: "unknown".into(),
                failover: "unknown".into(),
                readable: false,
                synchronized: false,
                lag_entries: 0,
                lag_ms: 0,
                healthy: false,
                matched: None,
            }),
        }
    }
    let mut st = merged.ok_or_else(|| {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("no replica of {name} answers"),
        )
    })?;
    st.replicas = replicas;
    st.primary = None;
    Ok(Json(st))
}

async fn store_failover(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Body<store::proto::FailoverRequest>,
) -> Result<Json<store::proto::StoreStatus>, Failure> {
    let Json(mut req) =
        body.map_err(|_| bad_request("expected a JSON body {\"to\": null | \"server\"}"))?;
    let mut client = s.store_client(&name)?.clone();
    if req.from.is_none() {
        // Named, so that a retry reaching the new primary does not fail over again.
        let st: store::proto::StoreStatus = client.call("status", Vec::new()).await?;
        req.from = st.primary;
    }
    client.attempt = std::time::Duration::from_secs(30);
    Ok(Json(
        client.call("failover", store::proto::encode(&req)).await?,
    ))
}

/// `POST /api/v1/stores/{name}/backup`: `{"to": null | "share directory"}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackupBody {
    #[serde(default)]
    pub to: Option<String>,
    /// A log backup rather than a full one.
    #[serde(default)]
    pub log: bool,
}

/// `GET /api/v1/logship`: the log-shipping links whose secondary or primary this server
/// holds, each as that side sees it.
async fn logship_status(State(s): State<Arc<AdminState>>) -> Json<Vec<store::logship::LinkStatus>> {
    Json(
        s.logship
            .iter()
            .map(|l| l.status())
            .chain(
                s.logship_ends
                    .iter()
                    .filter(|(_, src)| !matches!(src, store::logship::Source::Secondary(_)))
                    .map(|(p, _)| p.status()),
            )
            .collect(),
    )
}

/// `POST /api/v1/logship/{link}/failover`: `{"tail_from": null | "primary's database file"}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FailoverBody {
    #[serde(default)]
    pub tail_from: Option<String>,
    /// A hand-over: the primary closes its writes and ships everything first.
    #[serde(default)]
    pub planned: bool,
}

/// Brings a link's secondary online: a tail-log backup from the primary first (its store
/// through its listener when it is replicated and still answers, or its database file), then
/// everything restored.
async fn logship_failover(
    State(s): State<Arc<AdminState>>,
    Path(link): Path<String>,
    body: Body<FailoverBody>,
) -> Result<Json<store::logship::FailoverReport>, Failure> {
    let Json(req) = body.map_err(|_| {
        bad_request("expected a JSON body {\"tail_from\": null | \"path\", \"planned\": bool}")
    })?;
    let Some(sec) = s.logship.iter().find(|l| l.config().link == link).cloned() else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("this server holds the secondary of no log-shipping link named {link}"),
        ));
    };
    if req.planned {
        if req.tail_from.is_some() {
            return Err(bad_request(
                "a planned failover takes no --tail-from: the primary ships its own tail",
            ));
        }
        // The primary's backup job looks for a hand-over every second; the last log backup
        // takes about as long as a scheduled one.
        let wait = std::time::Duration::from_secs(20);
        let sec2 = sec.clone();
        let done = tokio::task::spawn_blocking(move || sec2.planned_failover(wait))
            .await
            .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        return match done {
            Ok(r) => Ok(Json(open_replica(&sec, r).await)),
            Err(e) => Err(logship_refusal(e)),
        };
    }
    sec.check_seeded().map_err(logship_refusal)?;
    let cfg = sec.config().clone();
    let mut tail = (
        "no tail-log backup: the primary's database was not given (--tail-from) and its store \
         cannot be reached; commands after the last log backup, if any, are lost"
            .to_string(),
        false,
    );
    if req.tail_from.is_none()
        && let Some(client) = s.stores.get(&cfg.primary)
    {
        let mut c = client.clone();
        c.deadline = std::time::Duration::from_secs(5);
        c.attempt = std::time::Duration::from_secs(5);
        let asked: Result<store::backup::LogBackup, _> = c
            .call(
                "backup",
                store::proto::encode(&store::proto::BackupRequest {
                    share: cfg.share.to_string_lossy().into_owned(),
                    log: true,
                    full_every_s: None,
                    // The primary answers: nothing it acknowledges after this tail is lost.
                    close_writes: Some(format!(
                        "{} was failed over to {} by log shipping {}: it takes no writes until \
                         it is reseeded as the new secondary",
                        cfg.primary, cfg.secondary, cfg.link
                    )),
                }),
            )
            .await;
        tail = match asked {
            Ok(b) => (
                match b.segment {
                    Some(seg) => format!(
                        "tail-log backup by {}: LSN {}..{}",
                        seg.server, seg.first, seg.last
                    ),
                    None => "tail-log backup: nothing after the last backup".into(),
                },
                true,
            ),
            Err(e) => (
                format!(
                    "no tail-log backup: the primary store did not answer ({e}); commands after the last log backup, if any, are lost"
                ),
                false,
            ),
        };
    }
    let tail_from = req.tail_from.map(std::path::PathBuf::from);
    let sec2 = sec.clone();
    let done = tokio::task::spawn_blocking(move || sec2.failover(tail_from.as_deref(), tail, None))
        .await
        .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    match done {
        Ok(r) => Ok(Json(open_replica(&sec, r).await)),
        Err(e) => Err(logship_refusal(e)),
    }
}

/// A log-shipping operation that cannot be done as asked (409, with the reason), or a store
/// failure.
fn logship_refusal(e: StoreError) -> Failure {
    match e {
        StoreError::Invalid(why) => Failure(StatusCode::CONFLICT, why),
        other => Failure::from(other),
    }
}

/// After a failover to a replicated secondary: opens this server's replica of it (the
/// other replicas open theirs on their own); a failure is added to the report — the roles
/// changed, and this server keeps trying.
async fn open_replica(
    sec: &Arc<store::logship::Secondary>,
    mut report: store::logship::FailoverReport,
) -> store::logship::FailoverReport {
    if let Err(e) = sec.open_replica().await {
        let note = format!("this replica is not open yet ({e}); its server keeps trying");
        report.stopped = Some(match report.stopped.take() {
            Some(s) => format!("{s}; {note}"),
            None => note,
        });
    }
    report
}

/// The users of a standby log-shipping secondary, as its last restore left them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StandbyUsers {
    pub link: String,
    /// The standby store read.
    pub store: String,
    /// It holds everything its primary applied up to this time (unix ms)...
    pub complete_until_ms: u64,
    /// ...that many seconds ago: commands applied on the primary since may be missing.
    pub staleness_s: f64,
    pub users: Vec<UserRow>,
}

/// `GET /api/v1/logship/{link}/users`: a read on the link's standby secondary, between
/// restores, with the staleness it has.
async fn standby_users(
    State(s): State<Arc<AdminState>>,
    Path(link): Path<String>,
) -> Result<Json<StandbyUsers>, Failure> {
    let Some(sec) = s.logship.iter().find(|l| l.config().link == link).cloned() else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("this server holds the secondary of no log-shipping link named {link}"),
        ));
    };
    if sec.is_online() {
        return Err(Failure(
            StatusCode::CONFLICT,
            format!(
                "{} is online since a failover: read it as a store (`tandem user list`)",
                sec.config().secondary
            ),
        ));
    }
    let now = frontend::now_ms();
    let sec2 = sec.clone();
    let read =
        tokio::task::spawn_blocking(move || sec2.read(|conn| store::machine::users(conn, now)))
            .await
            .map_err(|e| Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let (users, until) = match read {
        Ok(r) => r,
        Err(e) => return Err(logship_refusal(e)),
    };
    Ok(Json(StandbyUsers {
        link,
        store: sec.config().secondary.clone(),
        complete_until_ms: until,
        staleness_s: now.saturating_sub(until) as f64 / 1000.0,
        users: users
            .into_iter()
            .map(|u| UserRow {
                aor: u.aor,
                created_ms: u.created_ms,
                bindings: u.bindings,
            })
            .collect(),
    }))
}

/// `POST /api/v1/logship/{link}/reverse`: after a failover to this server's secondary, ships
/// its log back to the old primary (which its servers reseed when they start).
async fn logship_reverse(
    State(s): State<Arc<AdminState>>,
    Path(link): Path<String>,
) -> Result<Json<store::logship::ReverseReport>, Failure> {
    let ends: Vec<_> = s
        .logship_ends
        .iter()
        .filter(|(p, _)| p.link == link)
        .collect();
    if ends.is_empty() {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("this server serves neither end of a log-shipping link named {link}"),
        ));
    }
    // The end the roles make the primary, if this server serves it.
    let online = ends.iter().find(|(p, _)| {
        store::logship::roles(&p.share, &p.link, &p.primary, &p.secondary)
            .is_ok_and(|r| r.primary == p.store)
    });
    let Some((plink, source)) = online.or(ends.first()).copied() else {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("no end of {link} here"),
        ));
    };
    match store::logship::reverse(plink, source, &s.info.server).await {
        Ok(r) => Ok(Json(r)),
        Err(e) => Err(logship_refusal(e)),
    }
}

/// A full or log backup of a store onto a share: by the primary (the owner) of a replicated
/// store, here for a standalone store this server holds.
async fn store_backup(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Body<BackupBody>,
) -> Result<Json<store::backup::LogBackup>, Failure> {
    let Json(req) = body.map_err(|_| {
        bad_request("expected a JSON body {\"to\": null | \"share\", \"log\": bool}")
    })?;
    let share = match (req.to, s.backup_shares.get(&name)) {
        (Some(to), _) => to,
        (None, Some(share)) => share.to_string_lossy().into_owned(),
        (None, None) => {
            return Err(bad_request(format!(
                "no backup share for {name}: give one (--to), or declare a log_shipping link from it"
            )));
        }
    };
    let request = store::proto::BackupRequest {
        share,
        log: req.log,
        ..Default::default()
    };
    if let Some((db, handle)) = s.local_stores.get(&name) {
        let done = store::node::run_backup_request(
            db.clone(),
            request,
            name.clone(),
            s.info.server.clone(),
            |cmd| async move {
                handle
                    .apply(cmd)
                    .await
                    .map(|_| ())
                    .map_err(store::proto::Refusal::Store)
            },
        )
        .await;
        return match done {
            Ok(b) => Ok(Json(b)),
            Err(store::proto::Refusal::Refused(why)) => Err(bad_request(why)),
            Err(e) => Err(Failure::from(e)),
        };
    }
    let mut client = s.store_client(&name)?.clone();
    client.attempt = std::time::Duration::from_secs(120);
    Ok(Json(
        client
            .call("backup", store::proto::encode(&request))
            .await?,
    ))
}

/// `POST /api/v1/stores/{name}/force-service`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForceBody {
    pub to: String,
    pub confirm: bool,
}

async fn store_force(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Body<ForceBody>,
) -> Result<Json<store::proto::ForceReport>, Failure> {
    let Json(req) = body
        .map_err(|_| bad_request("expected a JSON body {\"to\": \"server\", \"confirm\": bool}"))?;
    let client = s.store_client(&name)?;
    let Some(target) = client.replicas().iter().find(|r| r.server == req.to) else {
        return Err(bad_request(format!(
            "{} is not a replica of {name}",
            req.to
        )));
    };
    Ok(Json(client.force(&target.addr, req.confirm).await?))
}

/// `POST /api/v1/stores/{name}/mirroring`: `{"safety": ..., "witness": ...}`.
async fn store_mirroring(
    State(s): State<Arc<AdminState>>,
    Path(name): Path<String>,
    body: Body<store::proto::MirroringChange>,
) -> Result<Json<store::proto::StoreStatus>, Failure> {
    let Json(change) = body.map_err(|_| {
        bad_request("expected a JSON body {\"safety\": null | \"high-safety\" | \"high-performance\", \"witness\": null | bool}")
    })?;
    // Letting the witness in waits for it to catch up.
    let mut client = s.store_client(&name)?.clone();
    client.attempt = std::time::Duration::from_secs(60);
    client.deadline = std::time::Duration::from_secs(90);
    Ok(Json(
        client
            .call("mirroring", store::proto::encode(&change))
            .await?,
    ))
}

async fn store_member(
    State(s): State<Arc<AdminState>>,
    Path((name, op)): Path<(String, String)>,
    body: Body<store::proto::MemberChange>,
) -> Result<Json<store::proto::StoreStatus>, Failure> {
    if !matches!(op.as_str(), "add-replica" | "remove-replica" | "set-commit") {
        return Err(Failure(
            StatusCode::NOT_FOUND,
            format!("no store operation {op}"),
        ));
    }
    let Json(mut change) = body.map_err(|_| {
        bad_request("expected a JSON body {\"server\": ..., \"addr\": ..., \"commit\": ...}")
    })?;
    if op == "add-replica" && change.addr.is_none() {
        change.addr = Some(s.rpc_addrs.get(&change.server).cloned().ok_or_else(|| {
            bad_request(format!(
                "{} has no rpc address in the topology; pass --addr",
                change.server
            ))
        })?);
    }
    // Adding a replica waits for it to catch up (a snapshot may travel): give it time.
    let mut client = s.store_client(&name)?.clone();
    client.attempt = std::time::Duration::from_secs(120);
    client.deadline = std::time::Duration::from_secs(180);
    Ok(Json(client.call(&op, store::proto::encode(&change)).await?))
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    let mut out = String::new();
    if let Some(fe) = &s.frontend {
        fe.metrics.render(&mut out);
        let (server_tx, client_tx) = fe.transactions();
        let _ = writeln!(out, "# TYPE tandem_sip_transactions gauge");
        let _ = writeln!(
            out,
            "tandem_sip_transactions{{side=\"server\"}} {server_tx}"
        );
        let _ = writeln!(
            out,
            "tandem_sip_transactions{{side=\"client\"}} {client_tx}"
        );
        let _ = writeln!(out, "# TYPE tandem_sip_tcp_connections gauge");
        let _ = writeln!(
            out,
            "tandem_sip_tcp_connections {}",
            fe.transports.connections()
        );
    }
    if !s.logship.is_empty() {
        let links: Vec<store::logship::LinkStatus> = s.logship.iter().map(|l| l.status()).collect();
        for (name, help, value) in [
            (
                "tandem_logship_alert",
                "1 while a log-shipping link's monitor raises an alert",
                &(|l: &store::logship::LinkStatus| f64::from(u8::from(l.alert)))
                    as &dyn Fn(&store::logship::LinkStatus) -> f64,
            ),
            (
                "tandem_logship_lag_seconds",
                "age of the oldest shipped command not yet restored on the secondary",
                &|l: &store::logship::LinkStatus| l.lag_s,
            ),
            (
                "tandem_logship_lag_transactions",
                "shipped commands not yet restored on the secondary",
                &|l: &store::logship::LinkStatus| l.lag_tx as f64,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} gauge");
            for l in &links {
                let _ = writeln!(out, "{name}{{link=\"{}\"}} {}", l.link, value(l));
            }
        }
    }
    if let Some(st) = &s.store {
        let (commits, applied, refused, failed) = st.counters();
        for (name, v, help) in [
            (
                "commits",
                commits,
                "store transactions committed (one fsync each)",
            ),
            ("applied", applied, "store commands applied"),
            (
                "refused",
                refused,
                "store commands refused (nothing changed)",
            ),
            (
                "failed",
                failed,
                "store commands lost to a storage failure (not acknowledged)",
            ),
        ] {
            let _ = writeln!(out, "# HELP tandem_store_{name}_total {help}");
            let _ = writeln!(out, "# TYPE tandem_store_{name}_total counter");
            let _ = writeln!(out, "tandem_store_{name}_total {v}");
        }
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aor_forms_normalize_and_foreign_or_odd_ones_are_refused() {
        let d = "example.com";
        for ok in [
            "alice",
            "alice@example.com",
            "sip:alice@example.com",
            "sip:alice@EXAMPLE.com",
        ] {
            assert_eq!(
                normalize_aor(ok, d),
                Ok(("sip:alice@example.com".into(), "alice".into())),
                "{ok}"
            );
        }
        for bad in [
            "",
            "alice@other.org",
            "sip:alice@example.com:5070",
            "sip:example.com",
            "al ice",
            "a\"b",
            "sip:alice@example.com;x=1",
        ] {
            assert!(normalize_aor(bad, d).is_err(), "{bad}");
        }
    }
}
