//! Shared by the replicated-store process tests (each uses part of it).
#![allow(dead_code)]

use nix::sys::signal::Signal;
use std::time::Duration;
use testkit::RegisterLoad;
use testkit::replicated::ReplicatedLab;

/// Sends `count` writes (new users, 50 ms apart) straight to `server`'s store service,
/// bypassing the client's search for the primary, and returns each answer (`None`: no
/// answer in time).
pub fn direct_writes(
    lab: &ReplicatedLab,
    server: &str,
    count: u128,
) -> Vec<Option<store::proto::Reply<store::Applied>>> {
    let topology = topology::load(&lab.dir.join("topology.toml")).unwrap();
    let addr = topology.server(server).unwrap().rpc.unwrap().to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let secret = rpc::ClusterSecret::load(lab.dir.join("data").join("cluster.secret")).unwrap();
    let pool = store::pool::RpcPool::new(rpc::ClientConfig::new(secret, &topology.name, "tester"));
    let mut answers = Vec::new();
    for i in 0..count {
        let env = store::Envelope {
            request: Some(1000 + i),
            cmd: store::Command::AddUser {
                user: store::User {
                    aor: format!("sip:stale{i}@example.com"),
                    username: format!("stale{i}"),
                    realm: "example.com".into(),
                    ha1_md5: "x".into(),
                    ha1_sha256: "x".into(),
                    created_ms: 0,
                },
            },
        };
        let reply = runtime.block_on(pool.call(
            &addr,
            "store/store/apply",
            store::proto::encode(&env),
            Duration::from_secs(5),
        ));
        answers.push(reply.ok().map(|bytes| {
            store::proto::decode::<store::proto::Reply<store::Applied>>(&bytes, "reply").unwrap()
        }));
        std::thread::sleep(Duration::from_millis(50));
    }
    answers
}

/// Forced service on a replica that fell behind: under registration load, `behind` is paused
/// until the status reports it lagging; then the servers in `lost` are killed, `behind` wakes
/// up, and service is forced on it. The tool must state a loss, the registrations actually
/// lost must be no more than the lag the status reported before, and service must go on.
/// (`users` is the number of users the lab provisioned.)
pub fn forced_service_after_site_loss(
    lab: &ReplicatedLab,
    behind: &str,
    lost: &[&str],
    users: usize,
) {
    let load = RegisterLoad::start(lab.sip, 4, users, "pw");
    assert!(load.wait_for(100, Duration::from_secs(60)));
    lab.signal(behind, Signal::SIGSTOP);
    let n = load.records.lock().unwrap().len();
    assert!(load.wait_for(n + 100, Duration::from_secs(60)));
    let records = load.stop();
    let before = lab.status();
    let row = before["replicas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["server"] == behind)
        .unwrap()
        .clone();
    let reported_lag = row["lag_entries"].as_u64().unwrap();
    assert!(reported_lag > 0, "{behind} should be behind: {before}");
    for server in lost {
        lab.signal(server, Signal::SIGKILL);
    }
    lab.signal(behind, Signal::SIGCONT);
    let out = lab.cli(&["store", "force-service", "store", "--to", behind, "--yes"]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains(&format!("Forcing service on {behind} loses")),
        "{text}"
    );
    lab.wait_primary(behind, |p| p == behind);
    let actually_lost = lab.lost(&records);
    eprintln!(
        "forced service: {} registrations lost, status had reported {behind} {reported_lag} transactions behind\n{text}",
        actually_lost.len()
    );
    assert!(
        actually_lost.len() as u64 <= reported_lag,
        "lost {} > reported lag {reported_lag}",
        actually_lost.len()
    );
    // Service goes on.
    let mut ua = testkit::Ua::udp(lab.sip, &format!("user{users:04}"), "pw", testkit::DOMAIN);
    assert_eq!(ua.register(600).status, 200);
}
