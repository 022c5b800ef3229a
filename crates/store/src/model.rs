//! The store's data types: what commands carry and what queries return.
//!
//! Commands are deterministic: every time, tag and entity-tag they need is chosen by the caller
//! and carried in the command, so applying the same commands in the same order gives the same
//! state on every replica.

use serde::{Deserialize, Serialize};

/// A provisioned user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Address of record, `sip:user@domain`.
    pub aor: String,
    /// The digest username (the user part of the AOR).
    pub username: String,
    /// The digest realm the HA1 values were computed for (the SIP domain).
    pub realm: String,
    /// MD5(username:realm:password), hex.
    pub ha1_md5: String,
    /// SHA-256(username:realm:password), hex.
    pub ha1_sha256: String,
    pub created_ms: u64,
}

/// A user as listed by the admin API (no secrets).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserSummary {
    pub aor: String,
    pub created_ms: u64,
    /// Unexpired bindings at the time of the query.
    pub bindings: u32,
}

/// How to reach a client again: the transport and address a request came from, and (TCP) the
/// connection it came on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// `udp` or `tcp`.
    pub transport: String,
    /// The source `ip:port` the request came from.
    pub source: String,
    /// For connection-oriented transports: `server/boot/connection`, meaningful only to the
    /// server process that wrote it; empty for UDP.
    pub flow: String,
}

/// A registered contact of an AOR.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub aor: String,
    /// The contact URI.
    pub contact: String,
    /// Contact header parameters other than `expires` (e.g. `;q=0.5;+sip.instance="<...>"`).
    pub params: String,
    pub call_id: String,
    pub cseq: u32,
    pub expires_ms: u64,
    pub route: Route,
    pub user_agent: String,
    pub updated_ms: u64,
}

/// One change a REGISTER asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactUpdate {
    pub contact: String,
    pub params: String,
    /// Negotiated lifetime; 0 removes the binding.
    pub expires_s: u32,
}

/// What a REGISTER does to an AOR's bindings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RegisterUpdate {
    /// `Contact: *` with `Expires: 0`.
    RemoveAll,
    /// Add, refresh or remove each contact.
    Contacts(Vec<ContactUpdate>),
}

/// A REGISTER, as the registrar decided it (RFC 3261 §10.3 steps 6–8 run in the store).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub aor: String,
    pub call_id: String,
    pub cseq: u32,
    pub update: RegisterUpdate,
    pub route: Route,
    pub user_agent: String,
    /// Most bindings an AOR may hold; more fails the whole request.
    pub max_contacts: u32,
    pub now_ms: u64,
}

/// A PUBLISH (RFC 3903), as the presence server decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Publish {
    /// Initial publication (no SIP-If-Match).
    Create {
        aor: String,
        etag: String,
        body: Vec<u8>,
        content_type: String,
        expires_s: u32,
        now_ms: u64,
    },
    /// Refresh (SIP-If-Match, no body): new entity-tag, new expiry.
    Refresh {
        aor: String,
        etag: String,
        new_etag: String,
        expires_s: u32,
        now_ms: u64,
    },
    /// Modify (SIP-If-Match with a body).
    Modify {
        aor: String,
        etag: String,
        new_etag: String,
        body: Vec<u8>,
        content_type: String,
        expires_s: u32,
        now_ms: u64,
    },
    /// Remove (SIP-If-Match, Expires: 0).
    Remove {
        aor: String,
        etag: String,
        now_ms: u64,
    },
}

/// A subscription dialog for the presence event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// Store-assigned id (0 for a one-shot fetch that was never stored).
    pub id: i64,
    /// The watched AOR.
    pub presentity: String,
    /// The To URI of the SUBSCRIBE, used as From of each NOTIFY.
    pub presentity_uri: String,
    /// The watcher's AOR (the authenticated user).
    pub watcher: String,
    /// The From URI of the SUBSCRIBE, used as To of each NOTIFY.
    pub watcher_uri: String,
    pub call_id: String,
    /// The watcher's From tag.
    pub watcher_tag: String,
    /// Our To tag.
    pub local_tag: String,
    /// Where NOTIFYs go (the SUBSCRIBE's Contact URI).
    pub contact: String,
    pub route: Route,
    pub expires_ms: u64,
    /// CSeq of the last NOTIFY sent in this dialog.
    pub notify_cseq: u32,
}

/// A SUBSCRIBE, as the presence server decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Subscribe {
    /// A new dialog (no To tag). `expires_s == 0` is a fetch: one NOTIFY, nothing stored.
    New {
        subscription: Box<Subscription>,
        expires_s: u32,
        now_ms: u64,
    },
    /// A refresh inside an existing dialog; `expires_s == 0` ends it.
    Refresh {
        call_id: String,
        watcher_tag: String,
        local_tag: String,
        contact: Option<String>,
        route: Route,
        expires_s: u32,
        now_ms: u64,
    },
    /// The watcher answered a NOTIFY with 481, or never answered: forget the dialog.
    End { id: i64 },
}

/// A publication of a presentity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Publication {
    pub etag: String,
    pub body: Vec<u8>,
    pub content_type: String,
    pub expires_ms: u64,
    pub updated_ms: u64,
}

/// A presentity's state, from which a PIDF document is composed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub aor: String,
    /// Unexpired publications, oldest first.
    pub publications: Vec<Publication>,
    /// Unexpired bindings.
    pub registered_contacts: u32,
}

/// Subscription-State of a NOTIFY.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubscriptionState {
    Active {
        expires_s: u32,
    },
    /// `reason` as in RFC 6665 (`timeout`, `deactivated`, `noresource`).
    Terminated {
        reason: String,
    },
}

/// A NOTIFY to send, decided by the state machine (its CSeq is already counted).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notify {
    pub subscription: Subscription,
    pub state: SubscriptionState,
    pub presence: Presence,
}

/// Every change the store accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    AddUser {
        user: User,
    },
    SetPassword {
        aor: String,
        ha1_md5: String,
        ha1_sha256: String,
    },
    RemoveUser {
        aor: String,
        now_ms: u64,
    },
    Register(Register),
    Publish(Publish),
    Subscribe(Subscribe),
    /// Removes everything that expired by `now_ms`.
    Expire {
        now_ms: u64,
    },
    /// Records a failover in the store's own history (written by the new primary).
    RecordFailover(FailoverEvent),
    /// Completes a failover record with the time of the first write the new primary
    /// committed (which is when service resumed).
    FailoverServing {
        id: i64,
        first_write_ms: u64,
    },
    /// A mirroring store's safety level, set while it serves (`store set-safety`): whether
    /// the principal waits for the mirror. Replicated, so a new principal knows it.
    SetMirroringSafety {
        high_safety: bool,
    },
    /// Turns the transaction log on (`txlog`: every command applied after this one is kept
    /// with its LSN until a log backup has it) or off. Replicated, so every replica logs the
    /// same commands and a new primary's log goes on where the old one's stopped.
    SetTransactionLog {
        on: bool,
    },
    /// A log backup holds every command up to `upto`: the transaction log forgets them.
    TruncateTransactionLog {
        upto: u64,
    },
    /// Another store took over this one's service (a log-shipping failover): from this
    /// command on, every command that changes data is refused with `reason`, on every replica
    /// and across restarts. Backups, the transaction log and the failover history go on.
    CloseWrites {
        reason: String,
    },
}

impl Command {
    /// True for the commands a store with closed writes refuses: those that change users,
    /// registrations, presence or subscriptions.
    pub fn writes_data(&self) -> bool {
        matches!(
            self,
            Command::AddUser { .. }
                | Command::SetPassword { .. }
                | Command::RemoveUser { .. }
                | Command::Register(_)
                | Command::Publish(_)
                | Command::Subscribe(_)
                | Command::Expire { .. }
        )
    }
}

/// How a primary changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FailoverKind {
    /// The replicas elected a new primary after losing the old one.
    Automatic,
    /// An operator moved the primary (`store failover`), with no data loss.
    Planned,
    /// An operator forced service on a replica that may lack transactions (`force-service`).
    Forced,
}

impl FailoverKind {
    /// The name shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            FailoverKind::Automatic => "automatic",
            FailoverKind::Planned => "planned",
            FailoverKind::Forced => "forced",
        }
    }
}

/// One failover, measured: RPO as transactions lost, RTO as the time from detection to the
/// first successful write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverEvent {
    /// Store-assigned id (0 before it is recorded).
    pub id: i64,
    pub kind: FailoverKind,
    /// The server that was primary before, when known.
    pub from_server: Option<String>,
    pub to_server: String,
    /// The new primary's term.
    pub term: u64,
    /// When the failure was detected (last contact with the old primary plus the election
    /// timeout), or when the operator asked (planned, forced). Unix ms.
    pub detected_ms: u64,
    /// When the new primary took over. Unix ms.
    pub decided_ms: u64,
    /// When the new primary committed its first write; 0 until known.
    pub first_write_ms: u64,
    /// The last log position known committed before the failover.
    pub last_acked_before: u64,
    /// The new primary's last log position when it took over.
    pub last_acked_after: u64,
    /// Committed transactions that did not survive (RPO): 0 unless forced.
    pub lost_transactions: u64,
    /// Which positions were lost, e.g. "1043..1050", when any.
    pub lost_detail: String,
    /// Free text: why, who asked.
    pub reason: String,
}

impl FailoverEvent {
    /// RTO in milliseconds: detection to first successful write (None until served).
    pub fn rto_ms(&self) -> Option<u64> {
        (self.first_write_ms > 0).then(|| self.first_write_ms.saturating_sub(self.detected_ms))
    }
}

/// A command as it is replicated: with the id of the request that asked for it, so a client
/// that retries after a failover gets the first outcome instead of a second application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Unique per request (random 128 bits); `None` for commands that are safe to repeat.
    pub request: Option<u128>,
    pub cmd: Command,
}

/// What an applied command produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Done,
    /// The AOR's bindings after a REGISTER.
    Bindings(Vec<Binding>),
    /// The entity-tag of a publication after a PUBLISH (`None` after a removal).
    Published {
        etag: Option<String>,
    },
    /// The subscription after a SUBSCRIBE.
    Subscribed(Box<Subscription>),
    /// The id of a recorded failover.
    Recorded(i64),
}

/// An applied command's outcome and the NOTIFYs it calls for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub outcome: Outcome,
    pub notify: Vec<Notify>,
}

/// Every read the store serves; carried over the network to a replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    User {
        aor: String,
    },
    Users {
        now_ms: u64,
    },
    Bindings {
        aor: String,
        now_ms: u64,
    },
    Presence {
        aor: String,
        now_ms: u64,
    },
    SubscriptionByDialog {
        call_id: String,
        watcher_tag: String,
        local_tag: String,
    },
    NextExpiry,
    /// The most recent failovers, newest first.
    Failovers {
        limit: u32,
    },
    /// The subscriptions to a presentity.
    Watchers {
        aor: String,
    },
}

impl Query {
    /// Whether the query reads a handful of rows by key (a user's bindings, one presentity's
    /// publications, one dialog), as opposed to a scan whose size grows with the data.
    pub fn is_point(&self) -> bool {
        match self {
            Query::User { .. }
            | Query::Bindings { .. }
            | Query::Presence { .. }
            | Query::SubscriptionByDialog { .. }
            | Query::NextExpiry => true,
            Query::Users { .. } | Query::Failovers { .. } | Query::Watchers { .. } => false,
        }
    }
}

/// What a query returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum QueryResult {
    User(Option<User>),
    Users(Vec<UserSummary>),
    Bindings(Vec<Binding>),
    Presence(Presence),
    Subscription(Option<Box<Subscription>>),
    NextExpiry(Option<u64>),
    Failovers(Vec<FailoverEvent>),
    Subscriptions(Vec<Subscription>),
}
