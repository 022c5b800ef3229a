//! Validation rules, run over the spanned raw file, and the conversion to the model.
//!
//! Every rule records a diagnostic and carries on, so one run reports every problem.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::ops::Range;

use toml::Spanned;

use crate::diag::{Diagnostic, Reporter};
use crate::model::*;
use crate::raw::*;

/// The kinds of named things a topology declares.
#[derive(Clone, Copy)]
enum Kind {
    Site,
    Server,
    Pool,
    Store,
    LogShipping,
}

impl Kind {
    fn noun(self) -> &'static str {
        match self {
            Kind::Site => "site",
            Kind::Server => "server",
            Kind::Pool => "pool",
            Kind::Store => "store",
            Kind::LogShipping => "log shipping",
        }
    }

    fn table(self) -> &'static str {
        match self {
            Kind::Site => "[[site]]",
            Kind::Server => "[[server]]",
            Kind::Pool => "[[pool]]",
            Kind::Store => "[[store]]",
            Kind::LogShipping => "[[log_shipping]]",
        }
    }
}

/// "server `fe1`", or "a [[server]] table" when the name is missing.
fn label(kind: Kind, name: &Opt<String>) -> String {
    match val(name) {
        Some(n) => format!("{} `{n}`", kind.noun()),
        None => format!("a {} table", kind.table()),
    }
}

/// What the rules learn about a server from the tables that name it.
#[derive(Default)]
struct Usage {
    /// It is in a pool, holds a replica, or is a pair witness.
    has_role: bool,
    /// It is a front-end pool member.
    frontend: bool,
    /// Why it needs an `rpc` address, if it does.
    rpc_because: Option<String>,
}

struct Checker<'t, 'a> {
    raw: &'t RawTopology,
    rep: Reporter<'a>,
    sites: HashMap<&'t str, &'t RawSite>,
    servers: HashMap<&'t str, &'t RawServer>,
    pools: HashMap<&'t str, &'t RawPool>,
    stores: HashMap<&'t str, &'t RawStore>,
    usage: HashMap<&'t str, Usage>,
    /// Server -> the front-end pool it is in.
    frontend_of: HashMap<&'t str, &'t str>,
    /// Server -> the persistent-chat pool it is in.
    chat_of: HashMap<&'t str, &'t str>,
}

/// Checks every rule; returns the model (meaningful only when there are no diagnostics) and
/// the diagnostics in file order.
pub(crate) fn check(raw: &RawTopology, source: &str, file: &str) -> (Topology, Vec<Diagnostic>) {
    let mut rep = Reporter::new(source, file);
    let sites = declare(&mut rep, Kind::Site, &raw.site, |s| &s.name);
    let servers = declare(&mut rep, Kind::Server, &raw.server, |s| &s.name);
    let pools = declare(&mut rep, Kind::Pool, &raw.pool, |p| &p.name);
    let stores = declare(&mut rep, Kind::Store, &raw.store, |s| &s.name);
    declare(&mut rep, Kind::LogShipping, &raw.log_shipping, |l| &l.name);
    let mut c = Checker {
        raw,
        rep,
        sites,
        servers,
        pools,
        stores,
        usage: HashMap::new(),
        frontend_of: HashMap::new(),
        chat_of: HashMap::new(),
    };
    c.top();
    c.sip();
    for server in &raw.server {
        c.server(server);
    }
    for pool in &raw.pool {
        c.pool(pool);
    }
    for store in &raw.store {
        c.store(store);
    }
    let mut paired = HashMap::new();
    for pair in &raw.pair {
        c.pair(pair, &mut paired);
    }
    let mut secondaries = HashMap::new();
    for link in &raw.log_shipping {
        c.log_shipping(link, &mut secondaries);
    }
    c.addresses();
    c.server_usage();
    (build(raw), c.rep.finish())
}

/// Maps each name to its first declaration; reports missing and duplicate names.
fn declare<'t, T>(
    rep: &mut Reporter<'_>,
    kind: Kind,
    items: &'t [Spanned<T>],
    name_of: impl Fn(&'t T) -> &'t Opt<String>,
) -> HashMap<&'t str, &'t T> {
    let mut map = HashMap::new();
    let mut lines = HashMap::new();
    for item in items {
        let Some(name) = name_of(item.get_ref()) else {
            rep.error(
                item.span(),
                "missing-field",
                format!("this {} table has no `name`", kind.table()),
                format!("add `name = \"...\"` to this {} table", kind.table()),
            );
            continue;
        };
        let text = name.get_ref().as_str();
        if let Some(line) = lines.get(text) {
            rep.error(
                name.span(),
                "duplicate-name",
                format!(
                    "{} `{text}` is declared twice (first on line {line})",
                    kind.noun()
                ),
                format!(
                    "rename or remove one of them: each {} needs its own name",
                    kind.noun()
                ),
            );
        } else {
            lines.insert(text, rep.line(name.span().start));
            map.insert(text, item.get_ref());
        }
    }
    map
}

impl<'t> Checker<'t, '_> {
    /// Reports `missing-field` at `table` when the field is absent.
    fn required<T>(
        &mut self,
        field: &'t Opt<T>,
        key: &str,
        example: &str,
        table: Range<usize>,
        owner: &str,
    ) -> Option<&'t Spanned<T>> {
        if field.is_none() {
            self.rep.error(
                table,
                "missing-field",
                format!("{owner} has no `{key}`"),
                format!("add `{key} = {example}` to {owner}"),
            );
        }
        field.as_ref()
    }

    /// Whether `name` is declared as a `kind`; reports `unknown-name` when it is not.
    fn known(&mut self, kind: Kind, name: &Spanned<String>, from: &str) -> bool {
        let n = name.get_ref().as_str();
        let (found, declared): (bool, Vec<&str>) = match kind {
            Kind::Site => (
                self.sites.contains_key(n),
                names_of(&self.raw.site, |s| &s.name),
            ),
            Kind::Server => (
                self.servers.contains_key(n),
                names_of(&self.raw.server, |s| &s.name),
            ),
            Kind::Pool => (
                self.pools.contains_key(n),
                names_of(&self.raw.pool, |p| &p.name),
            ),
            Kind::Store => (
                self.stores.contains_key(n),
                names_of(&self.raw.store, |s| &s.name),
            ),
            Kind::LogShipping => (true, Vec::new()),
        };
        if !found {
            let choices = if declared.is_empty() {
                "none is declared yet".to_string()
            } else {
                format!("declared: {}", declared.join(", "))
            };
            self.rep.error(
                name.span(),
                "unknown-name",
                format!(
                    "{from} refers to {} `{n}`, which is not declared",
                    kind.noun()
                ),
                format!(
                    "declare it in a {} table or use a declared name ({choices})",
                    kind.table()
                ),
            );
        }
        found
    }

    fn server_site(&self, server: &str) -> Option<&'t str> {
        self.servers
            .get(server)
            .and_then(|s| val(&s.site))
            .map(String::as_str)
    }

    fn store_site(&self, store: &str) -> Option<&'t str> {
        self.stores
            .get(store)
            .and_then(|s| val(&s.site))
            .map(String::as_str)
    }

    fn uses(&mut self, server: &'t str) -> &mut Usage {
        self.usage.entry(server).or_default()
    }

    fn needs_rpc(&mut self, server: &'t str, because: String) {
        self.uses(server).rpc_because.get_or_insert(because);
    }

    fn top(&mut self) {
        let raw = self.raw;
        self.required(&raw.name, "name", "\"...\"", 0..0, "the topology");
        let domain = self.required(
            &raw.sip_domain,
            "sip_domain",
            "\"example.com\"",
            0..0,
            "the topology",
        );
        if let Some(domain) = domain
            && let Err(why) = check_dns_name(domain.get_ref())
        {
            self.rep.error(
                domain.span(),
                "invalid-domain",
                format!("sip_domain `{}` is not a valid DNS name: {why}", domain.get_ref()),
                "use a DNS name such as \"example.com\": labels of letters, digits and inner hyphens, separated by dots",
            );
        }
    }

    /// The `[sip]` table: known digest algorithms, consistent expiry limits.
    fn sip(&mut self) {
        let Some(table) = &self.raw.sip else { return };
        let sip = table.get_ref();
        if let Some(list) = &sip.digest_algorithms {
            if list.get_ref().is_empty() {
                self.rep.error(
                    list.span(),
                    "sip-settings",
                    "digest_algorithms is empty: no client could authenticate".to_string(),
                    "list at least one of \"SHA-256\" and \"MD5\"",
                );
            }
            let mut seen = HashSet::new();
            for alg in list.get_ref() {
                let name = alg.get_ref().to_ascii_uppercase();
                if name != "SHA-256" && name != "MD5" {
                    self.rep.error(
                        alg.span(),
                        "sip-settings",
                        format!("digest algorithm `{}` is not supported", alg.get_ref()),
                        "use \"SHA-256\" and/or \"MD5\" (RFC 8760)",
                    );
                } else if !seen.insert(name) {
                    self.rep.error(
                        alg.span(),
                        "sip-settings",
                        format!("digest algorithm `{}` is listed twice", alg.get_ref()),
                        "list each algorithm once, most preferred first",
                    );
                }
            }
        }
        let d = SipSettings::default();
        let get = |f: &Opt<u64>, default: u32| val(f).copied().unwrap_or(u64::from(default));
        let triples = [
            (
                "register",
                &sip.register_expires_min_s,
                &sip.register_expires_default_s,
                &sip.register_expires_max_s,
                (
                    d.register_expires_min_s,
                    d.register_expires_default_s,
                    d.register_expires_max_s,
                ),
            ),
            (
                "presence",
                &sip.presence_expires_min_s,
                &sip.presence_expires_default_s,
                &sip.presence_expires_max_s,
                (
                    d.presence_expires_min_s,
                    d.presence_expires_default_s,
                    d.presence_expires_max_s,
                ),
            ),
        ];
        for (what, min_f, def_f, max_f, (dmin, ddef, dmax)) in triples {
            let (min, def, max) = (get(min_f, dmin), get(def_f, ddef), get(max_f, dmax));
            let span = [min_f, def_f, max_f]
                .iter()
                .find_map(|f| f.as_ref().map(Spanned::span))
                .unwrap_or_else(|| table.span());
            if min == 0 || !(min <= def && def <= max) || max > u64::from(i32::MAX as u32) {
                self.rep.error(
                    span,
                    "sip-settings",
                    format!(
                        "{what} expiry limits must satisfy 1 <= min ({min}) <= default ({def}) <= max ({max}) < 2^31 seconds"
                    ),
                    format!("adjust {what}_expires_min_s, {what}_expires_default_s and {what}_expires_max_s"),
                );
            }
        }
        let limits: [(&Opt<u64>, &str, std::ops::RangeInclusive<u64>, &str); 4] = [
            (
                &sip.max_contacts_per_user,
                "max_contacts_per_user",
                1..=1000,
                "a user needs at least one contact; a few dozen is plenty",
            ),
            (
                &sip.nonce_ttl_s,
                "nonce_ttl_s",
                10..=3600,
                "nonces must live long enough for a client to answer, and not much longer",
            ),
            (
                &sip.max_queue_delay_ms,
                "max_queue_delay_ms",
                10..=10_000,
                "below SIP's 500 ms retransmission timer (T1) answers a loaded server's clients before they retransmit",
            ),
            (
                &sip.max_pending_requests,
                "max_pending_requests",
                1..=1_000_000,
                "each pending request holds a little memory; thousands are plenty",
            ),
        ];
        for (field, name, range, help) in limits {
            if let Some(n) = field
                && !range.contains(n.get_ref())
            {
                self.rep.error(
                    n.span(),
                    "sip-settings",
                    format!("{name} = {} is outside {range:?}", n.get_ref()),
                    help,
                );
            }
        }
    }

    fn server(&mut self, table: &'t Spanned<RawServer>) {
        let s = table.get_ref();
        let owner = label(Kind::Server, &s.name);
        if let Some(site) = self.required(&s.site, "site", "\"dc1\"", table.span(), &owner) {
            self.known(Kind::Site, site, &owner);
        }
        self.required(
            &s.admin,
            "admin",
            "\"127.0.0.1:8080\"",
            table.span(),
            &owner,
        );
    }

    fn pool(&mut self, table: &'t Spanned<RawPool>) {
        let p = table.get_ref();
        let owner = label(Kind::Pool, &p.name);
        if let Some(store) = self.required(&p.store, "store", "\"store1\"", table.span(), &owner) {
            self.known(Kind::Store, store, &owner);
        }
        let kind = self.required(&p.kind, "kind", "\"frontend\"", table.span(), &owner);
        match kind.map(|k| *k.get_ref()) {
            Some(PoolKind::Frontend) => self.frontend_pool(table, &owner),
            Some(PoolKind::PersistentChat) => self.chat_pool(table, &owner),
            None => {}
        }
    }

    /// Reports `pool-fields` for a field present in a pool of the wrong kind.
    fn forbid(&mut self, span: Option<Range<usize>>, key: &str, owner: &str, kind: PoolKind) {
        let Some(span) = span else { return };
        let instead = match kind {
            PoolKind::Frontend => {
                "a frontend pool has one `site` and lists its members in `servers`"
            }
            PoolKind::PersistentChat => {
                "a persistent-chat pool lists its `sites` and its members in `active` and `idle`"
            }
        };
        self.rep.error(
            span,
            "pool-fields",
            format!("{owner} is a {kind} pool but sets `{key}`"),
            format!("remove `{key}`: {instead}"),
        );
    }

    fn frontend_pool(&mut self, table: &'t Spanned<RawPool>, owner: &str) {
        let p = table.get_ref();
        let kind = PoolKind::Frontend;
        self.forbid(p.sites.as_ref().map(Spanned::span), "sites", owner, kind);
        self.forbid(p.active.as_ref().map(Spanned::span), "active", owner, kind);
        self.forbid(p.idle.as_ref().map(Spanned::span), "idle", owner, kind);
        let pool_name = val(&p.name).map_or("?", String::as_str);
        let site = self.required(&p.site, "site", "\"dc1\"", table.span(), owner);
        let site = site
            .filter(|s| self.known(Kind::Site, s, owner))
            .map(|s| s.get_ref().as_str());
        if let Some(list) = self.required(&p.servers, "servers", "[\"fe1\"]", table.span(), owner) {
            let n = list.get_ref().len();
            if n == 0 || n > 16 {
                self.rep.error(
                    list.span(),
                    "pool-size",
                    format!("{owner} has {n} servers; a front-end pool has 1 to 16"),
                    "list between 1 and 16 servers in `servers`; split a larger pool in two",
                );
            }
        }
        let members = names(&p.servers);
        let mut seen = HashSet::new();
        for member in members {
            let name = member.get_ref().as_str();
            if !seen.insert(name) {
                self.rep.error(
                    member.span(),
                    "pool-membership",
                    format!("server `{name}` is listed twice in {owner}"),
                    "list each server once",
                );
                continue;
            }
            if !self.known(Kind::Server, member, owner) {
                continue;
            }
            if let Some(other) = self.frontend_of.get(name) {
                self.rep.error(
                    member.span(),
                    "pool-membership",
                    format!(
                        "server `{name}` is in {owner} and already in front-end pool `{other}`"
                    ),
                    "a server belongs to one front-end pool; remove it from one of them",
                );
            } else {
                self.frontend_of.insert(name, pool_name);
            }
            let usage = self.uses(name);
            usage.has_role = true;
            usage.frontend = true;
            if members.len() > 1 {
                self.needs_rpc(
                    name,
                    format!("it shares front-end pool `{pool_name}` with other servers"),
                );
            }
            if let (Some(pool_site), Some(server_site)) = (site, self.server_site(name))
                && pool_site != server_site
            {
                self.rep.error(
                    member.span(),
                    "pool-site",
                    format!("server `{name}` is in site `{server_site}` but {owner} is in site `{pool_site}`"),
                    format!("use servers of site `{pool_site}` in this pool, or move `{name}` to that site"),
                );
            }
        }
        if let Some(groups) = &p.routing_groups
            && !(1..=1024).contains(groups.get_ref())
        {
            self.rep.error(
                groups.span(),
                "routing-groups",
                format!(
                    "{owner} has {} routing groups; the range is 1 to 1024",
                    groups.get_ref()
                ),
                "set `routing_groups` between 1 and 1024, or remove it for the default of 16",
            );
        }
        if let Some(after) = &p.replace_after_s
            && !(0..=604_800).contains(after.get_ref())
        {
            self.rep.error(
                after.span(),
                "replace-after",
                format!(
                    "{owner} replaces a lost server's replicas after {} s; the range is 0 (never) to 604800 (a week)",
                    after.get_ref()
                ),
                "set `replace_after_s` between 0 and 604800, or remove it for the default of 60",
            );
        }
        if let Some(r) = &p.group_replicas {
            let servers = p.servers.as_ref().map_or(0, |s| s.get_ref().len()) as i64;
            let value = *r.get_ref();
            if value != 3 && value != 5 {
                self.rep.error(
                    r.span(),
                    "group-replicas",
                    format!("{owner} asks for {value} replicas per routing group; Tandem places 3 or 5"),
                    "set `group_replicas = 3` (any one server may fail at once) or `5` (any two), or remove it for 3",
                );
            } else if value > servers {
                self.rep.error(
                    r.span(),
                    "group-replicas",
                    format!("{owner} asks for {value} replicas per routing group but has {servers} servers"),
                    "add servers to the pool, or set `group_replicas = 3`",
                );
            }
        }
    }

    fn chat_pool(&mut self, table: &'t Spanned<RawPool>, owner: &str) {
        let p = table.get_ref();
        let kind = PoolKind::PersistentChat;
        self.forbid(p.site.as_ref().map(Spanned::span), "site", owner, kind);
        self.forbid(
            p.servers.as_ref().map(Spanned::span),
            "servers",
            owner,
            kind,
        );
        self.forbid(
            p.routing_groups.as_ref().map(Spanned::span),
            "routing_groups",
            owner,
            kind,
        );
        self.forbid(
            p.replace_after_s.as_ref().map(Spanned::span),
            "replace_after_s",
            owner,
            kind,
        );
        self.forbid(
            p.group_replicas.as_ref().map(Spanned::span),
            "group_replicas",
            owner,
            kind,
        );
        let pool_name = val(&p.name).map_or("?", String::as_str);
        if let Some(list) =
            self.required(&p.sites, "sites", "[\"dc1\", \"dc2\"]", table.span(), owner)
        {
            let n = list.get_ref().len();
            if n == 0 || n > 2 {
                self.rep.error(
                    list.span(),
                    "pool-site",
                    format!("{owner} has {n} sites; a persistent-chat pool spans one or two sites"),
                    "list one or two sites in `sites`",
                );
            }
        }
        let mut sites: Vec<&str> = Vec::new();
        for site in names(&p.sites) {
            let name = site.get_ref().as_str();
            if sites.contains(&name) {
                self.rep.error(
                    site.span(),
                    "pool-site",
                    format!("site `{name}` is listed twice in {owner}"),
                    "list each site once",
                );
            } else if self.known(Kind::Site, site, owner) {
                sites.push(name);
            }
        }
        if let Some(active) = self.required(&p.active, "active", "[\"chat1\"]", table.span(), owner)
            && active.get_ref().is_empty()
        {
            self.rep.error(
                active.span(),
                "pool-size",
                format!("{owner} has no active server"),
                "list at least one server in `active`",
            );
        }
        let active = names(&p.active).iter().map(|m| (m, true));
        let members: Vec<_> = active
            .chain(names(&p.idle).iter().map(|m| (m, false)))
            .collect();
        let mut seen: HashMap<&str, bool> = HashMap::new();
        for &(member, is_active) in &members {
            let name = member.get_ref().as_str();
            if let Some(&was_active) = seen.get(name) {
                let what = if was_active == is_active {
                    "listed twice"
                } else {
                    "both active and idle"
                };
                self.rep.error(
                    member.span(),
                    "pool-membership",
                    format!("server `{name}` is {what} in {owner}"),
                    "list each server once, in either `active` or `idle`",
                );
                continue;
            }
            seen.insert(name, is_active);
            if !self.known(Kind::Server, member, owner) {
                continue;
            }
            if let Some(other) = self.chat_of.get(name) {
                self.rep.error(
                    member.span(),
                    "pool-membership",
                    format!("server `{name}` is in {owner} and already in persistent-chat pool `{other}`"),
                    "a server belongs to one persistent-chat pool; remove it from one of them",
                );
            } else {
                self.chat_of.insert(name, pool_name);
            }
            self.uses(name).has_role = true;
            if members.len() > 1 {
                self.needs_rpc(
                    name,
                    format!("it shares persistent-chat pool `{pool_name}` with other servers"),
                );
            }
            if let Some(server_site) = self.server_site(name)
                && !sites.is_empty()
                && !sites.contains(&server_site)
            {
                self.rep.error(
                    member.span(),
                    "pool-site",
                    format!(
                        "server `{name}` is in site `{server_site}`, which is not among the sites of {owner} ({})",
                        sites.join(", ")
                    ),
                    format!("add `{server_site}` to `sites` (at most two), or use a server of {}", sites.join(" or ")),
                );
            }
        }
    }

    fn store(&mut self, table: &'t Spanned<RawStore>) {
        let s = table.get_ref();
        let owner = label(Kind::Store, &s.name);
        let anchor = s.name.as_ref().map_or(table.span(), Spanned::span);
        if let Some(site) = self.required(&s.site, "site", "\"dc1\"", table.span(), &owner) {
            self.known(Kind::Site, site, &owner);
        }
        let mode = self.required(&s.mode, "mode", "\"standalone\"", table.span(), &owner);
        let mode = mode.map(|m| *m.get_ref());
        if let Some(mode) = mode {
            let misplaced = [
                (
                    "safety",
                    s.safety.as_ref().map(Spanned::span),
                    StoreMode::Mirroring,
                ),
                (
                    "shared_path",
                    s.shared_path.as_ref().map(Spanned::span),
                    StoreMode::FailoverCluster,
                ),
                (
                    "lease_ms",
                    s.lease_ms.as_ref().map(Spanned::span),
                    StoreMode::FailoverCluster,
                ),
            ];
            if let Some(lease) = &s.lease_ms
                && !(100..=60_000).contains(lease.get_ref())
            {
                self.rep.error(
                    lease.span(),
                    "lease",
                    format!(
                        "{owner} has a {} ms ownership lease; the range is 100 to 60000 ms",
                        lease.get_ref()
                    ),
                    "set `lease_ms` between 100 and 60000, or remove it for the default of 300",
                );
            }
            for (key, span, only) in misplaced {
                if let Some(span) = span
                    && mode != only
                {
                    self.rep.error(
                        span,
                        "store-mode",
                        format!("{owner} sets `{key}`, which a {mode} store does not have"),
                        format!("remove `{key}`: it applies to mode = \"{only}\" only"),
                    );
                }
            }
        }
        let store_name = val(&s.name).map_or("?", String::as_str);
        let count = s.replica.len();
        let mut roles: HashMap<ReplicaRole, usize> = HashMap::new();
        let mut seen: HashMap<&str, Option<ReplicaRole>> = HashMap::new();
        for table in &s.replica {
            let r = table.get_ref();
            let replica_owner = format!("a replica of {owner}");
            let server =
                self.required(&r.server, "server", "\"fe1\"", table.span(), &replica_owner);
            let role = self.required(&r.role, "role", "\"primary\"", table.span(), &replica_owner);
            let role = role.map(|x| *x.get_ref());
            if let Some(role) = role {
                *roles.entry(role).or_default() += 1;
            }
            if let Some(server) = server {
                let name = server.get_ref().as_str();
                if let Some(&previous) = seen.get(name) {
                    let as_role = |r: Option<ReplicaRole>| r.map_or("replica", |r| r.as_str());
                    if mode == Some(StoreMode::Mirroring) {
                        self.rep.error(
                            server.span(),
                            "mirroring-members",
                            format!(
                                "server `{name}` is both the {} and the {} of {owner}",
                                as_role(previous),
                                as_role(role)
                            ),
                            "put the principal, the mirror and the witness on three different servers",
                        );
                    } else {
                        self.rep.error(
                            server.span(),
                            "replica-duplicate",
                            format!("server `{name}` holds two replicas of {owner}"),
                            "remove one of them: a server holds at most one replica of a store",
                        );
                    }
                } else {
                    seen.insert(name, role);
                }
                if self.known(Kind::Server, server, &owner) {
                    self.uses(name).has_role = true;
                    if count > 1 {
                        self.needs_rpc(
                            name,
                            format!(
                                "it holds a replica of store `{store_name}` with other servers"
                            ),
                        );
                    }
                }
            }
            if let Some(mode) = mode {
                self.replica_fits_mode(r, role, mode, &owner);
            }
        }
        let n = |role| roles.get(&role).copied().unwrap_or(0);
        match mode {
            Some(StoreMode::Standalone) if count != 1 => self.rep.error(
                anchor,
                "standalone-replicas",
                format!("{owner} is standalone but has {count} replicas"),
                "give it exactly one [[store.replica]] with role = \"primary\", or choose another mode",
            ),
            Some(StoreMode::AvailabilityGroup) => {
                let primaries = n(ReplicaRole::Primary);
                if primaries != 1 {
                    self.rep.error(
                        anchor.clone(),
                        "ag-primary",
                        format!("{owner} has {primaries} primaries; an availability group has exactly one"),
                        "give exactly one replica role = \"primary\" and the others role = \"secondary\"",
                    );
                }
                let secondaries = n(ReplicaRole::Secondary);
                if secondaries > 8 {
                    self.rep.error(
                        anchor.clone(),
                        "ag-secondaries",
                        format!("{owner} has {secondaries} secondaries; an availability group has at most 8"),
                        "remove secondaries until there are at most 8",
                    );
                }
                if s.listener.is_none() {
                    self.rep.error(
                        anchor,
                        "ag-listener",
                        format!("{owner} is an availability group without a `listener`"),
                        "add `listener = \"IP:PORT\"`: the address the primary serves on, wherever it is",
                    );
                }
                self.ag_quorum(s, &owner);
            }
            Some(StoreMode::Mirroring) => {
                let (principals, mirrors) = (n(ReplicaRole::Principal), n(ReplicaRole::Mirror));
                if principals != 1 || mirrors != 1 {
                    self.rep.error(
                        anchor.clone(),
                        "mirroring-members",
                        format!("{owner} has {principals} principal(s) and {mirrors} mirror(s); mirroring needs exactly one of each"),
                        "declare one replica with role = \"principal\" and one with role = \"mirror\" (plus at most one \"witness\")",
                    );
                }
                let witnesses = n(ReplicaRole::Witness);
                if witnesses > 1 {
                    self.rep.error(
                        anchor,
                        "mirroring-members",
                        format!("{owner} has {witnesses} witnesses; mirroring takes at most one"),
                        "keep a single replica with role = \"witness\"",
                    );
                }
            }
            Some(StoreMode::FailoverCluster) => {
                if s.shared_path.is_none() {
                    self.rep.error(
                        anchor.clone(),
                        "cluster-shared-path",
                        format!("{owner} is a failover cluster without `shared_path`"),
                        "add `shared_path = \"/path\"`, a directory every node can reach",
                    );
                }
                let nodes = n(ReplicaRole::Node);
                let witnesses = n(ReplicaRole::Witness);
                if nodes < 2 {
                    self.rep.error(
                        anchor,
                        "cluster-shared-path",
                        format!("{owner} has {nodes} node(s); a failover cluster needs at least 2"),
                        "add [[store.replica]] tables with role = \"node\" on other servers",
                    );
                } else if nodes == 2 && witnesses == 0 {
                    // Ownership is decided by a majority: of two, losing one leaves none.
                    self.rep.error(
                        anchor,
                        "cluster-quorum",
                        format!("{owner} has 2 nodes and no witness: if one is lost, the other cannot take the storage over by itself"),
                        "add a third node, or a [[store.replica]] with role = \"witness\" on a third server",
                    );
                } else if witnesses > 1 {
                    self.rep.error(
                        anchor,
                        "cluster-quorum",
                        format!("{owner} has {witnesses} witnesses; a failover cluster takes at most one"),
                        "keep a single replica with role = \"witness\"",
                    );
                }
            }
            _ => {}
        }
    }

    /// The `ag-auto-failover-quorum` rule: a replica set to fail over automatically needs a
    /// majority of the voting (sync) replicas, the primary included, to outlive the primary.
    fn ag_quorum(&mut self, s: &RawStore, owner: &str) {
        let voters = s
            .replica
            .iter()
            .filter(|r| val(&r.get_ref().commit) != Some(&Commit::Async))
            .count();
        if voters >= 3 {
            return;
        }
        for r in &s.replica {
            let r = r.get_ref();
            if let Some(failover) = &r.failover
                && *failover.get_ref() == FailoverMode::Automatic
                && val(&r.commit) != Some(&Commit::Async)
            {
                let server = val(&r.server).map_or("?", String::as_str);
                self.rep.error(
                    failover.span(),
                    "ag-auto-failover-quorum",
                    format!(
                        "the replica on `{server}` of {owner} is set to fail over automatically, but {owner} has {voters} sync replica(s): without its primary, {} of {voters} is no majority",
                        voters.saturating_sub(1)
                    ),
                    "automatic failover needs at least three sync replicas (the primary included): add a sync secondary, or set `failover = \"manual\"`",
                );
            }
        }
    }

    /// The per-replica `store-mode` and `ag-auto-failover-async` rules.
    fn replica_fits_mode(
        &mut self,
        r: &RawReplica,
        role: Option<ReplicaRole>,
        mode: StoreMode,
        owner: &str,
    ) {
        let valid = valid_roles(mode);
        if let (Some(role), Some(span)) = (role, r.role.as_ref().map(Spanned::span))
            && !valid.contains(&role)
        {
            let valid: Vec<&str> = valid.iter().map(ReplicaRole::as_str).collect();
            self.rep.error(
                span,
                "store-mode",
                format!("{owner} is a {mode} store, which has no `{role}` replicas"),
                format!(
                    "use role {} (or change the store's mode)",
                    valid.join(" or ")
                ),
            );
        }
        if mode != StoreMode::AvailabilityGroup {
            let ag_only = [
                ("commit", r.commit.as_ref().map(Spanned::span)),
                ("failover", r.failover.as_ref().map(Spanned::span)),
                ("readable", r.readable.as_ref().map(Spanned::span)),
            ];
            for (key, span) in ag_only {
                if let Some(span) = span {
                    self.rep.error(
                        span,
                        "store-mode",
                        format!("a replica of {owner} sets `{key}`, which only availability-group replicas have"),
                        format!("remove `{key}`: a {mode} store derives it from its mode"),
                    );
                }
            }
            return;
        }
        if role == Some(ReplicaRole::Primary) {
            if let Some(commit) = &r.commit
                && *commit.get_ref() == Commit::Async
            {
                self.rep.error(
                    commit.span(),
                    "store-mode",
                    format!("the primary of {owner} is set to commit async"),
                    "remove `commit` from the primary: commit modes apply to secondaries",
                );
            }
            if let Some(readable) = &r.readable
                && *readable.get_ref()
            {
                self.rep.error(
                    readable.span(),
                    "store-mode",
                    format!("the primary of {owner} is marked readable"),
                    "remove `readable` from the primary: it marks readable secondaries",
                );
            }
        }
        if let Some(failover) = &r.failover
            && *failover.get_ref() == FailoverMode::Automatic
            && val(&r.commit) == Some(&Commit::Async)
        {
            let server = val(&r.server).map_or("?", String::as_str);
            self.rep.error(
                failover.span(),
                "ag-auto-failover-async",
                format!("the async replica on `{server}` of {owner} is set to fail over automatically"),
                "automatic failover needs a synchronized replica: set `commit = \"sync\"` or `failover = \"manual\"`",
            );
        }
    }

    fn pair(&mut self, table: &'t Spanned<RawPair>, paired: &mut HashMap<&'t str, usize>) {
        let p = table.get_ref();
        let pools = names(&p.pools);
        let owner = match pools {
            [a, b] => format!("the pair of `{}` and `{}`", a.get_ref(), b.get_ref()),
            _ => "this [[pair]]".to_string(),
        };
        let line = self.rep.line(table.span().start);
        if let Some(list) = self.required(
            &p.pools,
            "pools",
            "[\"pool-a\", \"pool-b\"]",
            table.span(),
            &owner,
        ) && pools.len() != 2
        {
            self.rep.error(
                list.span(),
                "pair-kind",
                format!(
                    "{owner} names {} pool(s); a pair is exactly two front-end pools",
                    pools.len()
                ),
                "list exactly two front-end pools in `pools`",
            );
        }
        let mut good: Vec<(&'t str, &'t RawPool)> = Vec::new();
        for (i, pool) in pools.iter().enumerate() {
            let name = pool.get_ref().as_str();
            if pools[..i].iter().any(|q| q.get_ref() == name) {
                self.rep.error(
                    pool.span(),
                    "pair-kind",
                    format!("pool `{name}` is paired with itself"),
                    "pair it with a front-end pool of another site",
                );
                continue;
            }
            if !self.known(Kind::Pool, pool, &owner) {
                continue;
            }
            let Some(&raw_pool) = self.pools.get(name) else {
                continue;
            };
            let kind = val(&raw_pool.kind).copied();
            if kind != Some(PoolKind::Frontend) {
                let kind = kind.map_or("kind-less", |k| k.as_str());
                self.rep.error(
                    pool.span(),
                    "pair-kind",
                    format!("pool `{name}` is a {kind} pool; only front-end pools are paired"),
                    "pair two front-end pools (persistent chat uses log shipping for DR)",
                );
                continue;
            }
            if let Some(first) = paired.get(name) {
                self.rep.error(
                    pool.span(),
                    "pool-paired-twice",
                    format!("pool `{name}` is already in the pair on line {first}"),
                    "a pool has one partner: remove it from one of the pairs",
                );
            } else {
                paired.insert(name, line);
            }
            good.push((name, raw_pool));
        }
        let sites: Vec<&str> = good
            .iter()
            .filter_map(|(_, p)| val(&p.site))
            .map(String::as_str)
            .collect();
        if let ([(a, _), (b, _)], [site_a, site_b], Some(list)) =
            (good.as_slice(), sites.as_slice(), &p.pools)
            && site_a == site_b
        {
            self.rep.error(
                list.span(),
                "pair-same-site",
                format!("pools `{a}` and `{b}` are both in site `{site_a}`; a pair backs a pool up in another site"),
                format!("pair `{a}` with a front-end pool of another site"),
            );
        }
        for (pool_name, pool) in &good {
            for member in names(&pool.servers) {
                let member = member.get_ref().as_str();
                if self.servers.contains_key(member) {
                    self.needs_rpc(member, format!("its pool `{pool_name}` is paired"));
                }
            }
        }
        if let Some(auto) = &p.automatic_failover
            && *auto.get_ref()
            && p.witness.is_none()
        {
            self.rep.error(
                auto.span(),
                "pair-witness",
                format!("{owner} fails over automatically but has no witness"),
                "add `witness = \"SERVER\"` naming a server in a third site, or set automatic_failover = false",
            );
        }
        if let Some(witness) = &p.witness
            && self.known(Kind::Server, witness, &owner)
        {
            let name = witness.get_ref().as_str();
            self.uses(name).has_role = true;
            self.needs_rpc(name, format!("it is the witness of {owner}"));
            if let Some(site) = self.server_site(name)
                && sites.contains(&site)
            {
                self.rep.error(
                    witness.span(),
                    "pair-witness",
                    format!(
                        "witness `{name}` is in site `{site}`, where one of the paired pools is"
                    ),
                    "put the witness in a third site, so it can tell which site is down",
                );
            }
        }
    }

    fn log_shipping(
        &mut self,
        table: &'t Spanned<RawLogShipping>,
        secondaries: &mut HashMap<&'t str, String>,
    ) {
        let l = table.get_ref();
        let owner = label(Kind::LogShipping, &l.name);
        let primary = self.required(&l.primary, "primary", "\"store1\"", table.span(), &owner);
        let secondary = self.required(
            &l.secondary,
            "secondary",
            "\"store1-dr\"",
            table.span(),
            &owner,
        );
        self.required(
            &l.share,
            "share",
            "\"/srv/tandem/backup\"",
            table.span(),
            &owner,
        );
        let primary = primary.filter(|p| self.known(Kind::Store, p, &owner));
        let secondary = secondary.filter(|s| self.known(Kind::Store, s, &owner));
        if let (Some(p), Some(s)) = (primary, secondary) {
            let (p_name, s_name) = (p.get_ref(), s.get_ref());
            if p_name == s_name {
                self.rep.error(
                    s.span(),
                    "logship-self",
                    format!("{owner} ships store `{p_name}` to itself"),
                    "set `secondary` to a store in another site",
                );
            } else if let (Some(site), Some(other)) =
                (self.store_site(p_name), self.store_site(s_name))
                && site == other
            {
                self.rep.error(
                    s.span(),
                    "logship-same-site",
                    format!("{owner} ships store `{p_name}` to store `{s_name}`, both in site `{site}`"),
                    "log shipping is for disaster recovery: set `secondary` to a store in another site",
                );
            }
        }
        if let Some(s) = secondary {
            let name = s.get_ref().as_str();
            if let Some(first) = secondaries.get(name) {
                self.rep.error(
                    s.span(),
                    "logship-twice",
                    format!("store `{name}` is already the secondary of {first}"),
                    "a store receives logs from one link: remove one of the links or use another secondary",
                );
            } else {
                secondaries.insert(name, owner.clone());
            }
        }
        for store in [primary, secondary].into_iter().flatten() {
            let store = store.get_ref().as_str();
            let Some(&raw_store) = self.stores.get(store) else {
                continue;
            };
            for replica in &raw_store.replica {
                if let Some(server) = val(&replica.get_ref().server)
                    && self.servers.contains_key(server.as_str())
                {
                    self.needs_rpc(server, format!("its store `{store}` takes part in {owner}"));
                }
            }
        }
        let positive = [
            ("backup_interval_s", &l.backup_interval_s, 60),
            ("copy_interval_s", &l.copy_interval_s, 60),
            ("restore_interval_s", &l.restore_interval_s, 60),
            ("backup_alert_s", &l.backup_alert_s, 3600),
            ("restore_alert_s", &l.restore_alert_s, 2700),
            ("retention_h", &l.retention_h, 72),
        ];
        for (key, field, default) in positive {
            if let Some(value) = field
                && *value.get_ref() == 0
            {
                self.rep.error(
                    value.span(),
                    "logship-interval",
                    format!("`{key}` of {owner} is 0"),
                    format!("set `{key}` to a positive number, or remove it for the default of {default}"),
                );
            }
        }
    }

    /// The `duplicate-address` rule, over servers then store listeners in file order.
    fn addresses(&mut self) {
        let mut used: Vec<(&str, &Spanned<SocketAddr>, String)> = Vec::new();
        for server in &self.raw.server {
            let s = server.get_ref();
            let owner = label(Kind::Server, &s.name);
            let fields = [
                ("UDP", "sip_udp", &s.sip_udp),
                ("TCP", "sip_tcp", &s.sip_tcp),
            ];
            let more = [("TCP", "rpc", &s.rpc), ("TCP", "admin", &s.admin)];
            for (proto, key, addr) in fields.into_iter().chain(more) {
                if let Some(addr) = addr {
                    used.push((proto, addr, format!("`{key}` of {owner}")));
                }
            }
        }
        for store in &self.raw.store {
            let s = store.get_ref();
            if let Some(listener) = &s.listener {
                used.push((
                    "TCP",
                    listener,
                    format!("`listener` of {}", label(Kind::Store, &s.name)),
                ));
            }
        }
        let mut first: HashMap<(&str, SocketAddr), &str> = HashMap::new();
        for (proto, addr, what) in &used {
            let socket = *addr.get_ref();
            if socket.port() == 0 {
                continue;
            }
            if let Some(other) = first.get(&(*proto, socket)) {
                self.rep.error(
                    addr.span(),
                    "duplicate-address",
                    format!("{proto} address {socket} of {what} is already used by {other}"),
                    "give each listening socket its own address or port (port 0 picks a free one)",
                );
            } else {
                first.insert((*proto, socket), what);
            }
        }
    }

    /// The rules about a server as a whole: `server-no-role`, `frontend-needs-sip`, `needs-rpc`.
    fn server_usage(&mut self) {
        for (name, server) in self.servers.clone() {
            let Some(name_span) = server.name.as_ref().map(Spanned::span) else {
                continue;
            };
            let usage = self.usage.remove(name).unwrap_or_default();
            if !usage.has_role {
                self.rep.error(
                    name_span.clone(),
                    "server-no-role",
                    format!("server `{name}` is in no pool, holds no store replica and is no pair witness"),
                    "add it to a pool or a store, or remove it",
                );
            }
            if usage.frontend && server.sip_udp.is_none() && server.sip_tcp.is_none() {
                self.rep.error(
                    name_span.clone(),
                    "frontend-needs-sip",
                    format!("server `{name}` is a front-end server but has no SIP address"),
                    format!("add `sip_udp = \"IP:5060\"` and/or `sip_tcp = \"IP:5060\"` to server `{name}`"),
                );
            }
            if let Some(because) = usage.rpc_because
                && server.rpc.is_none()
            {
                self.rep.error(
                    name_span,
                    "needs-rpc",
                    format!("server `{name}` needs an `rpc` address: {because}"),
                    format!("add `rpc = \"IP:PORT\"` to server `{name}`"),
                );
            }
        }
    }
}

/// The names declared in a list of tables, in file order.
fn names_of<'t, T>(
    items: &'t [Spanned<T>],
    name_of: impl Fn(&'t T) -> &'t Opt<String>,
) -> Vec<&'t str> {
    items
        .iter()
        .filter_map(|i| val(name_of(i.get_ref())))
        .map(String::as_str)
        .collect()
}

/// The replica roles a store mode allows.
fn valid_roles(mode: StoreMode) -> &'static [ReplicaRole] {
    match mode {
        StoreMode::Standalone => &[ReplicaRole::Primary],
        StoreMode::AvailabilityGroup => &[ReplicaRole::Primary, ReplicaRole::Secondary],
        StoreMode::Mirroring => &[
            ReplicaRole::Principal,
            ReplicaRole::Mirror,
            ReplicaRole::Witness,
        ],
        StoreMode::FailoverCluster => &[ReplicaRole::Node, ReplicaRole::Witness],
    }
}

/// Checks a DNS name (RFC 1123 host name, no trailing dot); says why it is not one.
fn check_dns_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 253 {
        return Err(format!(
            "it is {} characters long (at most 253)",
            name.len()
        ));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("it has an empty label (two dots in a row, or a dot at an end)".into());
        }
        if label.len() > 63 {
            return Err(format!("label `{label}` is longer than 63 characters"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && *c != '-')
        {
            return Err(format!(
                "`{c}` is not allowed (letters, digits and hyphens only)"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!("label `{label}` starts or ends with a hyphen"));
        }
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err("its last label is numeric (an IP address is not a domain)".into());
    }
    Ok(())
}

/// Builds the model, filling in defaults. Only meaningful when validation found nothing; never
/// panics on invalid input (missing values become empty).
fn build(raw: &RawTopology) -> Topology {
    let text = |field: &Opt<String>| val(field).cloned().unwrap_or_default();
    let list = |field: &Names| {
        names(field)
            .iter()
            .map(|n| n.get_ref().clone())
            .collect::<Vec<_>>()
    };
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let sites = raw.site.iter().map(Spanned::get_ref);
    let servers = raw.server.iter().map(Spanned::get_ref);
    Topology {
        name: text(&raw.name),
        sip_domain: text(&raw.sip_domain),
        sites: sites
            .map(|s| Site {
                name: text(&s.name),
                description: s.description.clone(),
            })
            .collect(),
        servers: servers
            .map(|s| Server {
                name: text(&s.name),
                site: text(&s.site),
                sip_udp: val(&s.sip_udp).copied(),
                sip_tcp: val(&s.sip_tcp).copied(),
                rpc: val(&s.rpc).copied(),
                admin: val(&s.admin).copied().unwrap_or(unspecified),
                data_dir: s.data_dir.clone(),
            })
            .collect(),
        pools: raw
            .pool
            .iter()
            .map(|p| {
                let p = p.get_ref();
                let kind = val(&p.kind).copied().unwrap_or(PoolKind::Frontend);
                let store = text(&p.store);
                let name = text(&p.name);
                match kind {
                    PoolKind::Frontend => Pool {
                        name,
                        kind,
                        sites: vec![text(&p.site)],
                        servers: list(&p.servers),
                        active: Vec::new(),
                        idle: Vec::new(),
                        store,
                        routing_groups: val(&p.routing_groups)
                            .and_then(|g| u32::try_from(*g).ok())
                            .unwrap_or(16),
                        replace_after_s: val(&p.replace_after_s)
                            .and_then(|s| u32::try_from(*s).ok())
                            .unwrap_or(60),
                        group_replicas: val(&p.group_replicas)
                            .and_then(|r| u32::try_from(*r).ok())
                            .unwrap_or(3),
                    },
                    PoolKind::PersistentChat => {
                        let (active, idle) = (list(&p.active), list(&p.idle));
                        Pool {
                            name,
                            kind,
                            sites: list(&p.sites),
                            servers: active.iter().chain(&idle).cloned().collect(),
                            active,
                            idle,
                            store,
                            routing_groups: 0,
                            replace_after_s: 0,
                            group_replicas: 0,
                        }
                    }
                }
            })
            .collect(),
        stores: raw.store.iter().map(|s| build_store(s.get_ref())).collect(),
        pairs: raw
            .pair
            .iter()
            .map(|p| {
                let p = p.get_ref();
                let pools = list(&p.pools);
                let pool = |i: usize| pools.get(i).cloned().unwrap_or_default();
                Pair {
                    pools: [pool(0), pool(1)],
                    automatic_failover: val(&p.automatic_failover).copied().unwrap_or(false),
                    witness: val(&p.witness).cloned(),
                }
            })
            .collect(),
        log_shipping: raw
            .log_shipping
            .iter()
            .map(|l| {
                let l = l.get_ref();
                let num = |field: &Opt<u64>, default: u64| val(field).copied().unwrap_or(default);
                LogShipping {
                    name: text(&l.name),
                    primary: text(&l.primary),
                    secondary: text(&l.secondary),
                    share: val(&l.share).cloned().unwrap_or_default(),
                    backup_interval_s: num(&l.backup_interval_s, 60),
                    copy_interval_s: num(&l.copy_interval_s, 60),
                    restore_interval_s: num(&l.restore_interval_s, 60),
                    restore_delay_s: num(&l.restore_delay_s, 0),
                    backup_alert_s: num(&l.backup_alert_s, 3600),
                    restore_alert_s: num(&l.restore_alert_s, 2700),
                    secondary_mode: val(&l.secondary_mode)
                        .copied()
                        .unwrap_or(SecondaryMode::Standby),
                    retention_h: num(&l.retention_h, 72),
                }
            })
            .collect(),
        sip: build_sip(raw.sip.as_ref().map(Spanned::get_ref)),
    }
}

/// The `[sip]` settings, defaults filled in.
fn build_sip(raw: Option<&RawSip>) -> SipSettings {
    let d = SipSettings::default();
    let Some(s) = raw else { return d };
    let num = |f: &Opt<u64>, default: u32| {
        val(f).map_or(default, |v| u32::try_from(*v).unwrap_or(u32::MAX))
    };
    let algorithms = names(&s.digest_algorithms)
        .iter()
        .map(|a| a.get_ref().to_ascii_uppercase())
        .collect::<Vec<_>>();
    SipSettings {
        digest_algorithms: if s.digest_algorithms.is_some() {
            algorithms
        } else {
            d.digest_algorithms
        },
        register_expires_min_s: num(&s.register_expires_min_s, d.register_expires_min_s),
        register_expires_max_s: num(&s.register_expires_max_s, d.register_expires_max_s),
        register_expires_default_s: num(
            &s.register_expires_default_s,
            d.register_expires_default_s,
        ),
        presence_expires_min_s: num(&s.presence_expires_min_s, d.presence_expires_min_s),
        presence_expires_max_s: num(&s.presence_expires_max_s, d.presence_expires_max_s),
        presence_expires_default_s: num(
            &s.presence_expires_default_s,
            d.presence_expires_default_s,
        ),
        max_contacts_per_user: num(&s.max_contacts_per_user, d.max_contacts_per_user),
        nonce_ttl_s: num(&s.nonce_ttl_s, d.nonce_ttl_s),
        max_queue_delay_ms: num(&s.max_queue_delay_ms, d.max_queue_delay_ms),
        max_pending_requests: num(&s.max_pending_requests, d.max_pending_requests),
    }
}

/// Builds a store, deriving commit and failover modes as documented on [`Replica`].
fn build_store(s: &RawStore) -> Store {
    let mode = val(&s.mode).copied().unwrap_or(StoreMode::Standalone);
    let safety = val(&s.safety).copied().unwrap_or(Safety::HighSafety);
    let has_witness = s
        .replica
        .iter()
        .any(|r| val(&r.get_ref().role) == Some(&ReplicaRole::Witness));
    let replicas = s
        .replica
        .iter()
        .map(|r| {
            let r = r.get_ref();
            let role = val(&r.role).copied().unwrap_or(ReplicaRole::Primary);
            let (commit, failover) = match (mode, role) {
                (StoreMode::AvailabilityGroup, _) => {
                    let commit = val(&r.commit).copied().unwrap_or(Commit::Sync);
                    let default = match commit {
                        Commit::Sync => FailoverMode::Automatic,
                        Commit::Async => FailoverMode::Manual,
                    };
                    (commit, val(&r.failover).copied().unwrap_or(default))
                }
                (StoreMode::Mirroring, ReplicaRole::Principal | ReplicaRole::Mirror) => {
                    match safety {
                        Safety::HighSafety if has_witness => {
                            (Commit::Sync, FailoverMode::Automatic)
                        }
                        Safety::HighSafety => (Commit::Sync, FailoverMode::Manual),
                        Safety::HighPerformance => (Commit::Async, FailoverMode::Manual),
                    }
                }
                (StoreMode::FailoverCluster, ReplicaRole::Node) => {
                    (Commit::Sync, FailoverMode::Automatic)
                }
                _ => (Commit::Sync, FailoverMode::Manual),
            };
            Replica {
                server: val(&r.server).cloned().unwrap_or_default(),
                role,
                commit,
                failover,
                readable: val(&r.readable).copied().unwrap_or(false),
            }
        })
        .collect();
    Store {
        name: val(&s.name).cloned().unwrap_or_default(),
        site: val(&s.site).cloned().unwrap_or_default(),
        mode,
        listener: val(&s.listener).copied(),
        safety,
        shared_path: val(&s.shared_path).cloned(),
        lease_ms: val(&s.lease_ms).copied().unwrap_or(DEFAULT_LEASE_MS),
        replicas,
    }
}

/// A failover cluster's ownership lease when the topology sets none: the replica layer's
/// shortest election timeout (`replica::DEFAULT_ELECTION_TIMEOUT_MS`).
pub const DEFAULT_LEASE_MS: u64 = 300;

#[cfg(test)]
mod tests {
    use super::check_dns_name;

    #[test]
    fn dns_names() {
        for good in ["example.com", "localhost", "a-b.c0.example", "x1.io"] {
            assert_eq!(check_dns_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "example..com",
            "-a.com",
            "a_b.com",
            "example.com.",
            "10.0.0.1",
            "ex ample.com",
        ] {
            assert!(check_dns_name(bad).is_err(), "{bad}");
        }
    }
}
