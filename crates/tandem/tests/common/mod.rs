//! Shared by the replicated-store process tests.

use std::time::Duration;
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
