//! Table data for `tandem topology show`.

use std::fmt::Display;

use crate::model::{PoolKind, StoreMode, Topology};

/// One table: a title, column names, and rows of cells (already formatted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// Section title, e.g. "Servers".
    pub title: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows, each with one cell per column.
    pub rows: Vec<Vec<String>>,
}

impl Table {
    fn new(title: &str, header: &[&str], rows: Vec<Vec<String>>) -> Table {
        Table {
            title: title.to_string(),
            header: header.iter().map(|h| h.to_string()).collect(),
            rows,
        }
    }
}

/// A cell for an optional value: the value, or "-".
fn opt<T: Display>(value: Option<T>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

impl Topology {
    /// The topology as tables: Sites, Servers, Pools, Stores, Pairs, Log shipping (always all
    /// six, in that order; a section with nothing declared has no rows).
    pub fn tables(&self) -> Vec<Table> {
        let sites = self
            .sites
            .iter()
            .map(|s| vec![s.name.clone(), opt(s.description.as_ref())])
            .collect();
        let servers = self
            .servers
            .iter()
            .map(|s| {
                let roles: Vec<&str> = self.roles_of(&s.name).iter().map(|r| r.as_str()).collect();
                vec![
                    s.name.clone(),
                    s.site.clone(),
                    if roles.is_empty() {
                        "-".to_string()
                    } else {
                        roles.join(", ")
                    },
                    opt(s.sip_udp),
                    opt(s.sip_tcp),
                    opt(s.rpc),
                    s.admin.to_string(),
                ]
            })
            .collect();
        let pools = self
            .pools
            .iter()
            .map(|p| {
                let (servers, groups) = match p.kind {
                    PoolKind::Frontend => (p.servers.join(", "), p.routing_groups.to_string()),
                    PoolKind::PersistentChat if p.idle.is_empty() => {
                        (format!("active: {}", p.active.join(", ")), "-".to_string())
                    }
                    PoolKind::PersistentChat => (
                        format!(
                            "active: {}; idle: {}",
                            p.active.join(", "),
                            p.idle.join(", ")
                        ),
                        "-".to_string(),
                    ),
                };
                vec![
                    p.name.clone(),
                    p.kind.to_string(),
                    p.sites.join(", "),
                    servers,
                    p.store.clone(),
                    groups,
                ]
            })
            .collect();
        let stores = self
            .stores
            .iter()
            .map(|s| {
                let replicas: Vec<String> = s
                    .replicas
                    .iter()
                    .map(|r| {
                        let readable = if r.readable { ", readable" } else { "" };
                        format!(
                            "{} ({}, {}, {}{readable})",
                            r.server, r.role, r.commit, r.failover
                        )
                    })
                    .collect();
                let safety = (s.mode == StoreMode::Mirroring).then_some(s.safety);
                vec![
                    s.name.clone(),
                    s.site.clone(),
                    s.mode.to_string(),
                    opt(safety),
                    opt(s.listener),
                    replicas.join(", "),
                ]
            })
            .collect();
        let pairs = self
            .pairs
            .iter()
            .map(|p| {
                let auto = if p.automatic_failover { "yes" } else { "no" };
                vec![
                    p.pools.join(", "),
                    auto.to_string(),
                    opt(p.witness.as_ref()),
                ]
            })
            .collect();
        let log_shipping = self
            .log_shipping
            .iter()
            .map(|l| {
                vec![
                    l.name.clone(),
                    l.primary.clone(),
                    l.secondary.clone(),
                    l.share.display().to_string(),
                    format!(
                        "{}/{}/{}",
                        l.backup_interval_s, l.copy_interval_s, l.restore_interval_s
                    ),
                    l.restore_delay_s.to_string(),
                    format!("{}/{}", l.backup_alert_s, l.restore_alert_s),
                    l.secondary_mode.to_string(),
                    l.retention_h.to_string(),
                ]
            })
            .collect();
        vec![
            Table::new("Sites", &["name", "description"], sites),
            Table::new(
                "Servers",
                &[
                    "name", "site", "roles", "sip udp", "sip tcp", "rpc", "admin",
                ],
                servers,
            ),
            Table::new(
                "Pools",
                &[
                    "name",
                    "kind",
                    "site(s)",
                    "servers",
                    "store",
                    "routing groups",
                ],
                pools,
            ),
            Table::new(
                "Stores",
                &["name", "site", "mode", "safety", "listener", "replicas"],
                stores,
            ),
            Table::new("Pairs", &["pools", "automatic failover", "witness"], pairs),
            Table::new(
                "Log shipping",
                &[
                    "name",
                    "primary",
                    "secondary",
                    "share",
                    "backup/copy/restore every (s)",
                    "restore delay (s)",
                    "backup/restore alert (s)",
                    "secondary mode",
                    "retention (h)",
                ],
                log_shipping,
            ),
        ]
    }
}
