//! The command line as an operator uses it: topology check/show, user provisioning and
//! registrations through the admin API, and clear errors for bad input.

#![allow(clippy::unwrap_used)] // tests unwrap: a panic is the failure report

use std::process::{Command, Output};
use testkit::{Options, Server, test_dir};

const EXE: &str = env!("CARGO_BIN_EXE_tandem");
const TMP: &str = env!("CARGO_TARGET_TMPDIR");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn tandem(args: &[&str]) -> Output {
    Command::new(EXE)
        .args(args)
        .env_remove("TANDEM_ADMIN")
        .env_remove("TANDEM_TOKEN_FILE")
        .output()
        .expect("run tandem")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// `topology check` says a valid file is valid, and for a broken one prints every problem
/// with file:line:column, the rule id and a help line, and exits non-zero.
#[test]
fn topology_check_reports_valid_and_broken_files() {
    for example in ["standard.toml", "enterprise.toml", "failover-cluster.toml"] {
        let o = tandem(&["topology", "check", &format!("{EXAMPLES}/{example}")]);
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("valid topology"));
    }
    let dir = test_dir(TMP, "cli_check");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "name = \"bad\"\nsip_domain = \"example.com\"\n[[site]]\nname = \"dc1\"\n[[server]]\nname = \"fe1\"\nsite = \"dc9\"\nadmin = \"127.0.0.1:8080\"\n[[server]]\nname = \"fe2\"\nsite = \"dc1\"\nadmin = \"127.0.0.1:8080\"\n",
    )
    .unwrap();
    let o = tandem(&["topology", "check", bad.to_str().unwrap()]);
    assert!(!o.status.success());
    let out = text(&o);
    assert!(out.contains("bad.toml:7:8: error[unknown-name]"), "{out}");
    assert!(out.contains("error[duplicate-address]"), "{out}");
    assert!(out.contains("error[server-no-role]"), "{out}");
    assert!(out.contains("help:"), "{out}");
}

/// `topology show` prints the tables an operator needs.
#[test]
fn topology_show_prints_tables() {
    let o = tandem(&["topology", "show", &format!("{EXAMPLES}/enterprise.toml")]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    for needle in [
        "Sites",
        "Servers",
        "Pools",
        "Stores",
        "Pairs",
        "Log shipping",
        "availability-group",
        "mirroring",
        "fe-a1",
        "127.0.0.21:5060",
        "witness1",
    ] {
        assert!(out.contains(needle), "missing {needle}:\n{out}");
    }
}

/// `user add|list|set-password|remove` and `registrations` work through the admin API, with
/// tables and `--json`; bad input is refused with a clear message and changes nothing.
#[test]
fn user_commands_through_the_admin_api() {
    let dir = test_dir(TMP, "cli_users");
    let server = Server::start(EXE.as_ref(), &dir, &Options::default());
    let admin = server.admin.to_string();
    let token = dir.join("data").join("admin.token");
    let tok = token.to_str().unwrap();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", admin.as_str(), "--token-file", tok]);
        tandem(&all)
    };
    let o = cli(&["user", "add", "pat", "--password", "first"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("added sip:pat@example.com"));
    let o = cli(&["user", "add", "pat@example.com", "--password", "again"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    let o = cli(&["user", "add", "quinn@elsewhere.org", "--password", "x"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("not in this server's domain"),
        "{}",
        text(&o)
    );

    let o = cli(&["user", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(text(&cli(&["user", "list"])).contains("sip:pat@example.com"));

    // The new password is the one that works.
    let o = cli(&["user", "set-password", "pat", "--password", "second"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(server.ua("pat", "first").register(600).status, 403);
    assert_eq!(server.ua("pat", "second").register(600).status, 200);
    let o = cli(&["registrations", "pat", "--json"]);
    let regs: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(regs.as_array().unwrap().len(), 1);
    assert!(text(&cli(&["registrations", "pat"])).contains("udp"));

    let o = cli(&["user", "remove", "pat"]);
    assert!(o.status.success());
    let o = cli(&["user", "remove", "pat"]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not found"));
    assert_eq!(server.ua("pat", "second").register(600).status, 403);

    // Without a token file the CLI says where it looked.
    let o = tandem(&[
        "user",
        "list",
        "--admin",
        &admin,
        "--token-file",
        "/nonexistent/token",
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("cannot read the admin token /nonexistent/token"),
        "{}",
        text(&o)
    );
    // With a wrong token the API refuses.
    let wrong = dir.join("wrong.token");
    std::fs::write(&wrong, "nope").unwrap();
    let o = tandem(&[
        "user",
        "list",
        "--admin",
        &admin,
        "--token-file",
        wrong.to_str().unwrap(),
    ]);
    assert!(text(&o).contains("HTTP 401"), "{}", text(&o));
}

/// A server refuses to start under a topology that does not name it, and two servers
/// cannot share one data directory.
#[test]
fn server_refuses_wrong_name_and_shared_data_dir() {
    let dir = test_dir(TMP, "cli_server");
    let server = Server::start(EXE.as_ref(), &dir, &Options::default());
    let topo = server.topology.to_str().unwrap().to_string();
    let o = tandem(&[
        "server",
        "--topology",
        &topo,
        "--name",
        "nobody",
        "--data",
        dir.join("x").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("server `nobody` is not in the topology"),
        "{}",
        text(&o)
    );
    let o = tandem(&[
        "server",
        "--topology",
        &topo,
        "--name",
        "fe1",
        "--data",
        dir.join("data").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("in use by another tandem server"),
        "{}",
        text(&o)
    );
}
