//! One failing topology per validation rule: each asserts the rule id and the line reported.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use topology::{Diagnostic, Diagnostics, parse};

/// A valid topology: sites dc1, dc2, dc3; fe1 (dc1) in pool1, fe2 (dc2) in pool2; both pools
/// on store1 (standalone, on fe1). Snippets are appended to it.
const BASE: &str = r#"name = "t"
sip_domain = "example.com"
[[site]]
name = "dc1"
[[site]]
name = "dc2"
[[site]]
name = "dc3"
[[server]]
name = "fe1"
site = "dc1"
sip_udp = "127.0.0.1:5060"
rpc = "127.0.0.1:7000"
admin = "127.0.0.1:8080"
[[server]]
name = "fe2"
site = "dc2"
sip_tcp = "127.0.0.2:5060"
rpc = "127.0.0.2:7000"
admin = "127.0.0.2:8080"
[[pool]]
name = "pool1"
kind = "frontend"
site = "dc1"
servers = ["fe1"]
store = "store1"
[[pool]]
name = "pool2"
kind = "frontend"
site = "dc2"
servers = ["fe2"]
store = "store1"
[[store]]
name = "store1"
site = "dc1"
mode = "standalone"
[[store.replica]]
server = "fe1"
role = "primary"
"#;

/// Diagnostics for BASE + snippet.
fn diagnostics(snippet: &str) -> Vec<Diagnostic> {
    match parse(&format!("{BASE}{snippet}"), "t.toml") {
        Ok(_) => Vec::new(),
        Err(Diagnostics(found)) => found,
    }
}

/// (rule, line) of each diagnostic for BASE + snippet, lines counted from the snippet's first.
fn problems(snippet: &str) -> Vec<(&'static str, usize)> {
    let offset = BASE.lines().count();
    diagnostics(snippet)
        .iter()
        .map(|d| (d.rule, d.line.saturating_sub(offset)))
        .collect()
}

/// (rule, line) of each diagnostic for a whole file.
fn problems_in(source: &str) -> Vec<(&'static str, usize)> {
    match parse(source, "t.toml") {
        Ok(_) => Vec::new(),
        Err(Diagnostics(found)) => found.iter().map(|d| (d.rule, d.line)).collect(),
    }
}

#[test]
fn base_is_valid() {
    assert_eq!(problems(""), vec![]);
}

#[test]
fn syntax() {
    assert_eq!(problems("[[server]\nname = \"x\"\n"), vec![("syntax", 1)]);
    // Bad enum value, wrong type, bad socket address: all `syntax`, at the value.
    assert_eq!(
        problems("[[pool]]\nname = \"p\"\nkind = \"backend\"\n"),
        vec![("syntax", 3)]
    );
    assert_eq!(problems("[[site]]\nname = 5\n"), vec![("syntax", 2)]);
    let found = diagnostics("[[server]]\nname = \"x\"\nsite = \"dc1\"\nadmin = \"127.0.0.9\"\n");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].rule, found[0].column), ("syntax", 9));
    assert!(found[0].help.contains("IP:PORT"), "{}", found[0].help);
}

#[test]
fn unknown_field() {
    assert_eq!(
        problems("[[site]]\nname = \"dc9\"\ncolour = \"red\"\n"),
        vec![("unknown-field", 3)]
    );
    assert_eq!(
        problems_in("name = \"t\"\nsip-domain = \"example.com\"\n"),
        vec![("unknown-field", 2)]
    );
}

#[test]
fn missing_field() {
    // Reported at the enclosing table; the server also has no role.
    let snippet = "[[server]]\nname = \"fe9\"\nsite = \"dc1\"\n";
    assert_eq!(
        problems(snippet),
        vec![("missing-field", 1), ("server-no-role", 2)]
    );
    assert_eq!(
        problems_in("sip_domain = \"example.com\"\n[[site]]\nname = \"dc1\"\n"),
        vec![("missing-field", 1)]
    );
    assert_eq!(
        problems("[[site]]\ndescription = \"no name\"\n"),
        vec![("missing-field", 1)]
    );
}

#[test]
fn unknown_name() {
    let snippet = r#"[[server]]
name = "fe9"
site = "dc9"
admin = "127.0.0.9:8080"
[[pool]]
name = "pool9"
kind = "frontend"
site = "dc1"
servers = ["fe-nine"]
store = "store9"
"#;
    assert_eq!(
        problems(snippet),
        vec![
            ("server-no-role", 2),
            ("unknown-name", 3),
            ("unknown-name", 9),
            ("unknown-name", 10)
        ]
    );
    let found = diagnostics(snippet);
    assert!(found[1].message.contains("`dc9`") && found[1].message.contains("server `fe9`"));
    assert!(found[1].help.contains("dc1, dc2, dc3"), "{}", found[1].help);
    let witness = "[[pair]]\npools = [\"pool1\", \"pool2\"]\nwitness = \"w9\"\n";
    assert_eq!(problems(witness), vec![("unknown-name", 3)]);
}

#[test]
fn duplicate_name() {
    assert_eq!(
        problems("[[site]]\nname = \"dc1\"\n"),
        vec![("duplicate-name", 2)]
    );
    let found =
        diagnostics("[[server]]\nname = \"fe1\"\nsite = \"dc1\"\nadmin = \"127.0.0.9:8080\"\n");
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].rule, "duplicate-name");
    assert!(
        found[0].message.contains("first on line 10"),
        "{}",
        found[0].message
    );
}

#[test]
fn duplicate_address() {
    let snippet = r#"[[server]]
name = "fe3"
site = "dc1"
sip_udp = "127.0.0.3:5060"
sip_tcp = "127.0.0.3:5060"
rpc = "127.0.0.1:7000"
admin = "127.0.0.1:5060"
[[store]]
name = "store3"
site = "dc1"
mode = "standalone"
listener = "127.0.0.3:5060"
[[store.replica]]
server = "fe3"
role = "primary"
"#;
    // UDP and TCP may share host:port (lines 4, 5, 7); rpc reuses fe1's, the listener fe3's TCP.
    assert_eq!(
        problems(snippet),
        vec![("duplicate-address", 6), ("duplicate-address", 12)]
    );
}

#[test]
fn port_zero_is_never_a_duplicate() {
    let snippet = r#"[[server]]
name = "fe3"
site = "dc1"
sip_udp = "127.0.0.1:0"
admin = "127.0.0.1:0"
[[server]]
name = "fe4"
site = "dc1"
sip_udp = "127.0.0.1:0"
admin = "127.0.0.1:0"
[[pool]]
name = "solo3"
kind = "frontend"
site = "dc1"
servers = ["fe3"]
store = "store1"
[[pool]]
name = "solo4"
kind = "frontend"
site = "dc1"
servers = ["fe4"]
store = "store1"
"#;
    assert_eq!(problems(snippet), vec![]);
}

#[test]
fn invalid_domain() {
    assert_eq!(
        problems_in("name = \"t\"\nsip_domain = \"exa_mple.com\"\n"),
        vec![("invalid-domain", 2)]
    );
    assert_eq!(
        problems_in("name = \"t\"\n\nsip_domain = \"example..com\"\n"),
        vec![("invalid-domain", 3)]
    );
}

#[test]
fn pool_site() {
    let frontend = r#"[[server]]
name = "fe3"
site = "dc2"
sip_udp = "127.0.0.3:5060"
admin = "127.0.0.3:8080"
[[pool]]
name = "pool3"
kind = "frontend"
site = "dc1"
servers = ["fe3"]
store = "store1"
"#;
    assert_eq!(problems(frontend), vec![("pool-site", 10)]);
    let chat = r#"[[pool]]
name = "chat"
kind = "persistent-chat"
sites = ["dc1"]
active = ["fe1"]
idle = ["fe2"]
store = "store1"
"#;
    assert_eq!(problems(chat), vec![("pool-site", 6)]);
    let three = chat.replace(r#"sites = ["dc1"]"#, r#"sites = ["dc1", "dc2", "dc3"]"#);
    assert_eq!(problems(&three), vec![("pool-site", 4)]);
}

#[test]
fn pool_size() {
    let empty = "[[pool]]\nname = \"pool3\"\nkind = \"frontend\"\nsite = \"dc1\"\nservers = []\nstore = \"store1\"\n";
    assert_eq!(problems(empty), vec![("pool-size", 5)]);
    let chat = "[[pool]]\nname = \"chat\"\nkind = \"persistent-chat\"\nsites = [\"dc1\"]\nactive = []\nstore = \"store1\"\n";
    assert_eq!(problems(chat), vec![("pool-size", 5)]);
}

#[test]
fn pool_fields() {
    let chat = r#"[[pool]]
name = "chat"
kind = "persistent-chat"
sites = ["dc1"]
active = ["fe1"]
store = "store1"
routing_groups = 4
"#;
    assert_eq!(problems(chat), vec![("pool-fields", 7)]);
    let frontend = r#"[[pool]]
name = "pool3"
kind = "frontend"
sites = ["dc1"]
site = "dc1"
servers = ["fe9"]
store = "store1"
"#;
    assert_eq!(
        problems(frontend),
        vec![("pool-fields", 4), ("unknown-name", 6)]
    );
}

#[test]
fn pool_membership() {
    // fe1 is listed twice, and is already in pool1.
    let twice = "[[pool]]\nname = \"pool3\"\nkind = \"frontend\"\nsite = \"dc1\"\nservers = [\"fe1\", \"fe1\"]\nstore = \"store1\"\n";
    assert_eq!(
        problems(twice),
        vec![("pool-membership", 5), ("pool-membership", 5)]
    );
    let both = r#"[[pool]]
name = "chat"
kind = "persistent-chat"
sites = ["dc1"]
active = ["fe1"]
idle = ["fe1"]
store = "store1"
"#;
    assert_eq!(problems(both), vec![("pool-membership", 6)]);
    assert!(
        diagnostics(both)[0]
            .message
            .contains("both active and idle")
    );
}

#[test]
fn routing_groups() {
    for (value, bad) in [
        ("0", true),
        ("-3", true),
        ("1025", true),
        ("1", false),
        ("1024", false),
    ] {
        let snippet = format!(
            "[[pool]]\nname = \"pool1\"\nkind = \"frontend\"\nsite = \"dc1\"\nservers = [\"fe1\"]\nstore = \"store1\"\nrouting_groups = {value}\n"
        );
        // Re-declaring pool1 is a duplicate name (line 2) and fe1 then sits in two pools (line 5).
        let mut expected = vec![("duplicate-name", 2), ("pool-membership", 5)];
        if bad {
            expected.push(("routing-groups", 7));
        }
        assert_eq!(problems(&snippet), expected, "routing_groups = {value}");
    }
}

#[test]
fn replace_after() {
    for (value, bad) in [("-1", true), ("604801", true), ("0", false), ("30", false)] {
        let snippet = format!(
            "[[pool]]\nname = \"pool1\"\nkind = \"frontend\"\nsite = \"dc1\"\nservers = [\"fe1\"]\nstore = \"store1\"\nreplace_after_s = {value}\n"
        );
        let mut expected = vec![("duplicate-name", 2), ("pool-membership", 5)];
        if bad {
            expected.push(("replace-after", 7));
        }
        assert_eq!(problems(&snippet), expected, "replace_after_s = {value}");
    }
}

#[test]
fn group_replicas() {
    for (value, bad) in [("4", true), ("5", true), ("3", false)] {
        let snippet = format!(
            "[[pool]]\nname = \"pool1\"\nkind = \"frontend\"\nsite = \"dc1\"\nservers = [\"fe1\", \"fe2\", \"fe3\"]\nstore = \"store1\"\ngroup_replicas = {value}\n"
        );
        let got = problems(&snippet);
        assert_eq!(
            got.iter()
                .any(|(rule, line)| *rule == "group-replicas" && *line == 7),
            bad,
            "group_replicas = {value}: {got:?}"
        );
    }
}

#[test]
fn frontend_needs_sip() {
    let snippet = r#"[[server]]
name = "fe3"
site = "dc1"
admin = "127.0.0.3:8080"
[[pool]]
name = "pool3"
kind = "frontend"
site = "dc1"
servers = ["fe3"]
store = "store1"
"#;
    assert_eq!(problems(snippet), vec![("frontend-needs-sip", 2)]);
}

#[test]
fn needs_rpc() {
    let pool = r#"[[server]]
name = "fe3"
site = "dc1"
sip_udp = "127.0.0.3:5060"
admin = "127.0.0.3:8080"
[[server]]
name = "fe4"
site = "dc1"
sip_udp = "127.0.0.4:5060"
admin = "127.0.0.4:8080"
[[pool]]
name = "pool3"
kind = "frontend"
site = "dc1"
servers = ["fe3", "fe4"]
store = "store1"
"#;
    assert_eq!(problems(pool), vec![("needs-rpc", 2), ("needs-rpc", 7)]);
    // A pair witness talks to both sites.
    let witness = r#"[[server]]
name = "w1"
site = "dc3"
admin = "127.0.0.5:8080"
[[pair]]
pools = ["pool1", "pool2"]
automatic_failover = true
witness = "w1"
"#;
    assert_eq!(problems(witness), vec![("needs-rpc", 2)]);
    assert_eq!(
        problems(&witness.replace("admin =", "rpc = \"127.0.0.5:7000\"\nadmin =")),
        vec![]
    );
}

#[test]
fn server_no_role() {
    let snippet = "[[server]]\nname = \"spare\"\nsite = \"dc1\"\nadmin = \"127.0.0.9:8080\"\n";
    assert_eq!(problems(snippet), vec![("server-no-role", 2)]);
    assert!(
        diagnostics(snippet)[0]
            .help
            .contains("add it to a pool or a store, or remove it")
    );
}

#[test]
fn pair_same_site() {
    let snippet = r#"[[server]]
name = "fe3"
site = "dc1"
sip_udp = "127.0.0.3:5060"
rpc = "127.0.0.3:7000"
admin = "127.0.0.3:8080"
[[pool]]
name = "pool3"
kind = "frontend"
site = "dc1"
servers = ["fe3"]
store = "store1"
[[pair]]
pools = ["pool1", "pool3"]
"#;
    assert_eq!(problems(snippet), vec![("pair-same-site", 14)]);
}

#[test]
fn pair_kind() {
    assert_eq!(
        problems("[[pair]]\npools = [\"pool1\"]\n"),
        vec![("pair-kind", 2)]
    );
    assert_eq!(
        problems("[[pair]]\npools = [\"pool1\", \"pool1\"]\n"),
        vec![("pair-kind", 2)]
    );
    let chat = r#"[[pool]]
name = "chat"
kind = "persistent-chat"
sites = ["dc2"]
active = ["fe2"]
store = "store1"
[[pair]]
pools = ["pool1", "chat"]
"#;
    assert_eq!(problems(chat), vec![("pair-kind", 8)]);
}

#[test]
fn pool_paired_twice() {
    let snippet =
        "[[pair]]\npools = [\"pool1\", \"pool2\"]\n[[pair]]\npools = [\"pool2\", \"pool1\"]\n";
    assert_eq!(
        problems(snippet),
        vec![("pool-paired-twice", 4), ("pool-paired-twice", 4)]
    );
}

#[test]
fn pair_witness() {
    let no_witness = "[[pair]]\npools = [\"pool1\", \"pool2\"]\nautomatic_failover = true\n";
    assert_eq!(problems(no_witness), vec![("pair-witness", 3)]);
    // fe1 is in pool1's site: it cannot arbitrate between the two sites.
    let same_site =
        "[[pair]]\npools = [\"pool1\", \"pool2\"]\nautomatic_failover = true\nwitness = \"fe1\"\n";
    assert_eq!(problems(same_site), vec![("pair-witness", 4)]);
}

#[test]
fn store_mode() {
    let standalone = r#"[[store]]
name = "s2"
site = "dc1"
mode = "standalone"
safety = "high-safety"
[[store.replica]]
server = "fe1"
role = "principal"
"#;
    assert_eq!(
        problems(standalone),
        vec![("store-mode", 5), ("store-mode", 8)]
    );
    let primary = r#"[[store]]
name = "s2"
site = "dc1"
mode = "availability-group"
listener = "127.0.0.9:7100"
lease_ms = 500
[[store.replica]]
server = "fe1"
role = "primary"
commit = "async"
readable = true
[[store.replica]]
server = "fe2"
role = "secondary"
"#;
    assert_eq!(
        problems(primary),
        vec![("store-mode", 6), ("store-mode", 10), ("store-mode", 11)]
    );
    let mirror_commit = r#"[[store]]
name = "m"
site = "dc1"
mode = "mirroring"
[[store.replica]]
server = "fe1"
role = "principal"
[[store.replica]]
server = "fe2"
role = "mirror"
commit = "async"
"#;
    assert_eq!(problems(mirror_commit), vec![("store-mode", 11)]);
}

#[test]
fn standalone_replicas() {
    let two = r#"[[store]]
name = "s2"
site = "dc1"
mode = "standalone"
[[store.replica]]
server = "fe1"
role = "primary"
[[store.replica]]
server = "fe2"
role = "primary"
"#;
    assert_eq!(problems(two), vec![("standalone-replicas", 2)]);
    let none = "[[store]]\nname = \"s2\"\nsite = \"dc1\"\nmode = \"standalone\"\n";
    assert_eq!(problems(none), vec![("standalone-replicas", 2)]);
}

#[test]
fn ag_primary() {
    let snippet = r#"[[store]]
name = "ag"
site = "dc1"
mode = "availability-group"
listener = "127.0.0.9:7100"
[[store.replica]]
server = "fe1"
role = "secondary"
[[store.replica]]
server = "fe2"
role = "secondary"
"#;
    assert_eq!(problems(snippet), vec![("ag-primary", 2)]);
}

#[test]
fn ag_secondaries() {
    let mut snippet = String::new();
    for i in 1..=9 {
        snippet += &format!(
            "[[server]]\nname = \"be{i}\"\nsite = \"dc1\"\nrpc = \"127.0.1.{i}:7000\"\nadmin = \"127.0.1.{i}:8080\"\n"
        );
    }
    let store_line = snippet.lines().count() + 2;
    snippet += "[[store]]\nname = \"big\"\nsite = \"dc1\"\nmode = \"availability-group\"\nlistener = \"127.0.0.9:7100\"\n";
    snippet += "[[store.replica]]\nserver = \"fe1\"\nrole = \"primary\"\n";
    for i in 1..=9 {
        snippet += &format!("[[store.replica]]\nserver = \"be{i}\"\nrole = \"secondary\"\n");
    }
    assert_eq!(problems(&snippet), vec![("ag-secondaries", store_line)]);
    // Eight secondaries are fine.
    let eight = snippet.replace(
        "[[store.replica]]\nserver = \"be9\"\nrole = \"secondary\"\n",
        "",
    );
    assert_eq!(problems(&eight), vec![("server-no-role", 42)]);
}

#[test]
fn ag_auto_failover_async() {
    let snippet = r#"[[store]]
name = "ag"
site = "dc1"
mode = "availability-group"
listener = "127.0.0.9:7100"
[[store.replica]]
server = "fe1"
role = "primary"
[[store.replica]]
server = "fe2"
role = "secondary"
commit = "async"
failover = "automatic"
"#;
    assert_eq!(problems(snippet), vec![("ag-auto-failover-async", 13)]);
    // Async with the default (manual) failover is fine.
    assert_eq!(
        problems(
            snippet
                .trim_end()
                .trim_end_matches("failover = \"automatic\"")
        ),
        vec![]
    );
}

#[test]
fn ag_listener() {
    let snippet = r#"[[store]]
name = "ag"
site = "dc1"
mode = "availability-group"
[[store.replica]]
server = "fe1"
role = "primary"
[[store.replica]]
server = "fe2"
role = "secondary"
"#;
    assert_eq!(problems(snippet), vec![("ag-listener", 2)]);
    let with = snippet.replace(
        "mode = \"availability-group\"",
        "mode = \"availability-group\"\nlistener = \"127.0.0.9:7100\"",
    );
    assert_eq!(problems(&with), vec![]);
    // The listener's address is checked against the servers' like any other.
    let taken = snippet.replace(
        "mode = \"availability-group\"",
        "mode = \"availability-group\"\nlistener = \"127.0.0.1:7000\"",
    );
    assert_eq!(problems(&taken), vec![("duplicate-address", 5)]);
}

#[test]
fn ag_auto_failover_quorum() {
    let two = r#"[[store]]
name = "ag"
site = "dc1"
mode = "availability-group"
listener = "127.0.0.9:7100"
[[store.replica]]
server = "fe1"
role = "primary"
[[store.replica]]
server = "fe2"
role = "secondary"
failover = "automatic"
"#;
    // Two voters: without the primary, one of two is no majority.
    assert_eq!(problems(two), vec![("ag-auto-failover-quorum", 12)]);
    assert_eq!(
        problems(&two.replace("failover = \"automatic\"", "failover = \"manual\"")),
        vec![]
    );
    // An async replica adds no vote.
    let with_async = format!(
        "[[server]]\nname = \"be1\"\nsite = \"dc1\"\nrpc = \"127.0.1.1:7000\"\nadmin = \"127.0.1.1:8080\"\n{two}[[store.replica]]\nserver = \"be1\"\nrole = \"secondary\"\ncommit = \"async\"\n"
    );
    assert_eq!(problems(&with_async), vec![("ag-auto-failover-quorum", 17)]);
    // A third sync replica makes it a majority.
    let three = with_async.replace("commit = \"async\"\n", "");
    assert_eq!(problems(&three), vec![]);
}

#[test]
fn mirroring_members() {
    let snippet = r#"[[store]]
name = "m"
site = "dc1"
mode = "mirroring"
[[store.replica]]
server = "fe1"
role = "principal"
[[store.replica]]
server = "fe1"
role = "witness"
"#;
    // The witness shares the principal's server, and there is no mirror.
    assert_eq!(
        problems(snippet),
        vec![("mirroring-members", 2), ("mirroring-members", 9)]
    );
}

#[test]
fn cluster_shared_path() {
    let snippet = r#"[[store]]
name = "c"
site = "dc1"
mode = "failover-cluster"
[[store.replica]]
server = "fe1"
role = "node"
"#;
    // No shared_path, and a single node.
    assert_eq!(
        problems(snippet),
        vec![("cluster-shared-path", 2), ("cluster-shared-path", 2)]
    );
    let two = snippet.replace(
        "mode = \"failover-cluster\"",
        "mode = \"failover-cluster\"\nshared_path = \"/srv/c\"",
    ) + "[[store.replica]]\nserver = \"fe2\"\nrole = \"node\"\n";
    // Two nodes cannot fail over by themselves: a witness (or a third node) decides.
    assert_eq!(problems(&two), vec![("cluster-quorum", 2)]);
    let witness = "[[server]]\nname = \"w1\"\nsite = \"dc3\"\nrpc = \"127.0.0.3:7000\"\nadmin = \"127.0.0.3:8080\"\n";
    let good = format!("{witness}{two}[[store.replica]]\nserver = \"w1\"\nrole = \"witness\"\n");
    assert_eq!(problems(&good), vec![]);
    // The ownership lease: 100 ms to 60 s, at the value's line.
    for (lease, bad) in [
        ("50", true),
        ("60001", true),
        ("100", false),
        ("2000", false),
    ] {
        let with = good.replace(
            "shared_path = \"/srv/c\"",
            &format!("shared_path = \"/srv/c\"\nlease_ms = {lease}"),
        );
        let line = 1 + with
            .lines()
            .position(|l| l.starts_with("lease_ms"))
            .unwrap();
        let expected = if bad { vec![("lease", line)] } else { vec![] };
        assert_eq!(problems(&with), expected, "lease_ms = {lease}");
    }
}

#[test]
fn replica_duplicate() {
    let snippet = r#"[[store]]
name = "ag"
site = "dc1"
mode = "availability-group"
listener = "127.0.0.9:7100"
[[store.replica]]
server = "fe1"
role = "primary"
[[store.replica]]
server = "fe1"
role = "secondary"
"#;
    assert_eq!(problems(snippet), vec![("replica-duplicate", 10)]);
}

/// store2 (dc2, on fe2) and a log-shipping link store1 -> store2 named "dr".
const LOGSHIP: &str = r#"[[store]]
name = "store2"
site = "dc2"
mode = "standalone"
[[store.replica]]
server = "fe2"
role = "primary"
[[log_shipping]]
name = "dr"
primary = "store1"
secondary = "store2"
share = "share/dr"
"#;

#[test]
fn logship_same_site() {
    assert_eq!(problems(LOGSHIP), vec![]);
    let same = LOGSHIP.replace("site = \"dc2\"", "site = \"dc1\"");
    assert_eq!(problems(&same), vec![("logship-same-site", 11)]);
}

#[test]
fn logship_self() {
    let to_self = LOGSHIP.replace("secondary = \"store2\"", "secondary = \"store1\"");
    assert_eq!(problems(&to_self), vec![("logship-self", 11)]);
}

#[test]
fn logship_interval() {
    let zero = format!("{LOGSHIP}backup_interval_s = 0\nrestore_delay_s = 0\nretention_h = 0\n");
    // A restore delay of 0 is fine; a backup interval or retention of 0 is not.
    assert_eq!(
        problems(&zero),
        vec![("logship-interval", 13), ("logship-interval", 15)]
    );
}

#[test]
fn logship_twice() {
    let twice = format!(
        "{LOGSHIP}[[log_shipping]]\nname = \"dr2\"\nprimary = \"store1\"\nsecondary = \"store2\"\nshare = \"share/dr2\"\n"
    );
    assert_eq!(problems(&twice), vec![("logship-twice", 16)]);
}

#[test]
fn every_problem_is_reported_in_file_order() {
    let source = r#"name = "t"
sip_domain = "example.com"
[[site]]
name = "dc1"
[[server]]
name = "fe1"
site = "dc2"
admin = "127.0.0.1:8080"
[[server]]
name = "fe2"
site = "dc1"
admin = "127.0.0.1:8080"
"#;
    let err = parse(source, "bad.toml").expect_err("two problems");
    let rules: Vec<_> = err.0.iter().map(|d| (d.rule, d.line, d.column)).collect();
    assert_eq!(
        rules,
        vec![
            ("server-no-role", 6, 8),
            ("unknown-name", 7, 8),
            ("server-no-role", 10, 8),
            ("duplicate-address", 12, 9)
        ]
    );
    assert_eq!(err.rules().len(), 4);
    let text = err.to_string();
    assert!(
        text.contains("bad.toml:7:8: error[unknown-name]: server `fe1` refers to site `dc2`, which is not declared\n  help: "),
        "{text}"
    );
    assert_eq!(text.lines().count(), 8);
}

#[test]
fn rule_ids_are_listed() {
    for rule in ["syntax", "needs-rpc", "logship-twice", "io"] {
        assert!(topology::RULES.contains(&rule));
    }
}

/// The `[sip]` table: unknown algorithms and inconsistent expiry limits are refused.
#[test]
fn sip_settings_are_checked() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/standard.toml"
    ))
    .expect("example");
    let lines_before = base.lines().count();
    let text = format!(
        "{base}\n[sip]\ndigest_algorithms = [\"MD5\", \"SHA-512\", \"md5\"]\nregister_expires_min_s = 600\nregister_expires_max_s = 60\n"
    );
    let err = topology::parse(&text, "t.toml").expect_err("invalid");
    let found: Vec<(&str, usize)> = err.0.iter().map(|d| (d.rule, d.line)).collect();
    assert_eq!(
        found,
        vec![
            ("sip-settings", lines_before + 3),
            ("sip-settings", lines_before + 3),
            ("sip-settings", lines_before + 4),
        ]
    );
    let ok = format!("{base}\n[sip]\ndigest_algorithms = [\"MD5\"]\nregister_expires_min_s = 30\n");
    let t = topology::parse(&ok, "t.toml").expect("valid");
    assert_eq!(t.sip.digest_algorithms, vec!["MD5"]);
    assert_eq!(t.sip.register_expires_min_s, 30);
    assert_eq!(t.sip.register_expires_max_s, 7200);
    assert_eq!(t.sip.max_queue_delay_ms, 200, "overload control's default");
}

/// Overload control's limits are checked: a queue delay the client cannot notice up to 10 s,
/// at least one pending request.
#[test]
fn overload_limits_are_checked() {
    assert_eq!(
        problems("[sip]\nmax_queue_delay_ms = 5\nmax_pending_requests = 0\n"),
        vec![("sip-settings", 2), ("sip-settings", 3)]
    );
    let t = parse(
        &format!("{BASE}[sip]\nmax_queue_delay_ms = 400\nmax_pending_requests = 500\n"),
        "t.toml",
    )
    .expect("valid");
    assert_eq!(
        (t.sip.max_queue_delay_ms, t.sip.max_pending_requests),
        (400, 500)
    );
}
