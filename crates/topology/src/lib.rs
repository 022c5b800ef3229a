//! Tandem's topology: the one TOML file that declares sites, servers, pools, stores, pool pairs
//! and log-shipping links (DESIGN.md §2).
//!
//! [`parse`] and [`load`] read a file into a validated [`Topology`], or return every problem
//! found as [`Diagnostics`]: file, line, column, a stable rule id (e.g. `unknown-name`), a
//! message and a help line. [`Topology::tables`] gives the data `tandem topology show` prints.
//! `examples/standard.toml` and `examples/enterprise.toml` at the workspace root document the
//! format by example.

mod diag;
mod model;
mod raw;
mod table;
mod validate;

use std::path::Path;

pub use diag::{Diagnostic, Diagnostics};
pub use model::{
    Commit, FailoverMode, LogShipping, Pair, Pool, PoolKind, Replica, ReplicaRole, Role, Safety,
    SecondaryMode, Server, SipSettings, Site, Store, StoreMode, Topology,
};
pub use table::Table;

/// Every rule id a [`Diagnostic`] can carry, for documentation and tooling.
pub const RULES: &[&str] = &[
    "io",
    "syntax",
    "unknown-field",
    "missing-field",
    "unknown-name",
    "duplicate-name",
    "duplicate-address",
    "invalid-domain",
    "pool-site",
    "pool-size",
    "pool-fields",
    "pool-membership",
    "routing-groups",
    "replace-after",
    "group-replicas",
    "frontend-needs-sip",
    "needs-rpc",
    "server-no-role",
    "pair-same-site",
    "pair-kind",
    "pool-paired-twice",
    "pair-witness",
    "store-mode",
    "standalone-replicas",
    "ag-primary",
    "ag-secondaries",
    "ag-auto-failover-async",
    "ag-auto-failover-quorum",
    "ag-listener",
    "mirroring-members",
    "cluster-shared-path",
    "cluster-quorum",
    "replica-duplicate",
    "logship-same-site",
    "logship-self",
    "logship-interval",
    "logship-twice",
    "sip-settings",
];

/// Reads and validates a topology file. A read failure is one diagnostic with rule `io` and
/// line 0.
pub fn load(path: &Path) -> Result<Topology, Diagnostics> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(source) => parse(&source, &file),
        Err(e) => Err(Diagnostics(vec![Diagnostic {
            file,
            line: 0,
            column: 0,
            rule: "io",
            message: format!("cannot read the topology file: {e}"),
            help: "check the path and that the file is readable".to_string(),
        }])),
    }
}

/// Parses and validates topology text; `file` names it in diagnostics.
///
/// A TOML syntax or type error stops parsing, so it comes alone; otherwise every rule is
/// checked and every problem reported, in file order.
pub fn parse(source: &str, file: &str) -> Result<Topology, Diagnostics> {
    let raw: raw::RawTopology = match toml::from_str(source) {
        Ok(raw) => raw,
        Err(e) => return Err(Diagnostics(vec![toml_error(&e, source, file)])),
    };
    let (topology, problems) = validate::check(&raw, source, file);
    if problems.is_empty() {
        Ok(topology)
    } else {
        Err(Diagnostics(problems))
    }
}

/// Turns a TOML parse or deserialization error into a diagnostic.
fn toml_error(e: &toml::de::Error, source: &str, file: &str) -> Diagnostic {
    let message = e.message().trim().to_string();
    let (rule, help) = if message.starts_with("unknown field") {
        (
            "unknown-field",
            "remove this key or correct its spelling (the keys this table accepts are listed above)",
        )
    } else if message.starts_with("missing field") {
        ("missing-field", "add the missing key to this table")
    } else if message.contains("unknown variant") {
        ("syntax", "use one of the values listed above")
    } else if message.contains("socket address") {
        (
            "syntax",
            "write the address as \"IP:PORT\", e.g. \"127.0.0.1:5060\"",
        )
    } else if message.contains("duplicate key") {
        ("syntax", "remove one of the two keys")
    } else if message.contains("expected a sequence") {
        (
            "syntax",
            "this key holds a list: write each entry under its own [[double-bracket]] header, e.g. [[server]]",
        )
    } else if message.starts_with("invalid type") {
        (
            "syntax",
            "give the value the type the format expects (examples/standard.toml shows each key)",
        )
    } else {
        ("syntax", "fix the TOML syntax here")
    };
    let offset = e.span().map_or(0, |span| span.start);
    diag::diagnostic(source, file, offset, rule, message, help.to_string())
}
