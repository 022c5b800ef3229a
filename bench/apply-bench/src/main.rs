//! apply-bench: what applying REGISTERs costs a routing group's SQL machine, with its database
//! in a file (WAL mode, `synchronous=NORMAL`, as a store replica's) and in memory (as a routing
//! group's), side by side in one run, at several batch sizes (the entries openraft hands the
//! machine at once: 1 to a few at the rates a pool sees per group, more when it catches up).
//!
//! ```text
//! cargo build --release --manifest-path bench/apply-bench/Cargo.toml --target-dir target
//! target/release/apply-bench [--users 1250] [--registers 20000] [--batches 1,4,16,64] [--dir /tmp/apply-bench]
//! ```
//!
//! Each batch is one `Machine::apply` call: one transaction with the position, as a replica
//! applies it. The users are registered once before the timed part, so every timed REGISTER
//! refreshes an existing binding. Nothing is fsynced in either mode (the log is the durable
//! copy of both); the file's commits reach the page cache.

use anyhow::{Context, bail};
use replica::Machine;
use std::path::{Path, PathBuf};
use std::time::Instant;
use store::model::{Command, ContactUpdate, Envelope, Register, RegisterUpdate, Route};
use store::replicated::SqliteMachine;
use store::sqlite::Db;

struct Args {
    users: u64,
    registers: u64,
    batches: Vec<usize>,
    dir: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut a = Args {
        users: 1250,
        registers: 20_000,
        batches: vec![1, 4, 16, 64],
        dir: PathBuf::from("/tmp/apply-bench"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--users" => a.users = value.parse().context("--users")?,
            "--registers" => a.registers = value.parse().context("--registers")?,
            "--batches" => {
                a.batches = value
                    .split(',')
                    .map(|b| b.trim().parse::<usize>())
                    .collect::<Result<_, _>>()
                    .context("--batches")?
            }
            "--dir" => a.dir = PathBuf::from(value),
            other => bail!("unknown option {other}"),
        }
    }
    if a.users == 0 || a.registers == 0 || a.batches.contains(&0) {
        bail!("--users, --registers and every batch size must be at least 1");
    }
    Ok(a)
}

/// A REGISTER refreshing user `u`'s one contact, encoded as the log carries it.
fn register(u: u64, cseq: u32, now_ms: u64) -> anyhow::Result<Vec<u8>> {
    let env = Envelope {
        request: Some(store::node::random_id()),
        cmd: Command::Register(Register {
            aor: format!("sip:user{u}@example.com"),
            call_id: format!("call-{u}@127.0.0.1"),
            cseq,
            update: RegisterUpdate::Contacts(vec![ContactUpdate {
                contact: format!("sip:user{u}@127.0.0.1:{}", 5000 + u),
                params: String::new(),
                expires_s: 3600,
            }]),
            route: Route {
                transport: "udp".into(),
                source: format!("127.0.0.1:{}", 5000 + u),
                flow: String::new(),
            },
            user_agent: "apply-bench".into(),
            max_contacts: 10,
            now_ms,
        }),
    };
    Ok(postcard::to_allocvec(&env)?)
}

/// Applies `registers` REGISTERs in batches of `batch` after one per user; µs per REGISTER.
fn run(db: Db, scratch: &Path, a: &Args, batch: usize) -> anyhow::Result<f64> {
    let mut m = SqliteMachine::open_db(db, scratch)?.users_elsewhere()?;
    let mut position = 0u64;
    let mut apply = |m: &mut SqliteMachine, cmds: &[Vec<u8>]| -> anyhow::Result<()> {
        position += cmds.len() as u64;
        let refs: Vec<Option<&[u8]>> = cmds.iter().map(|c| Some(c.as_slice())).collect();
        let out = m.apply(&refs, format!("{{\"p\":{position}}}").as_bytes())?;
        if out.len() != cmds.len() {
            bail!("{} answers to {} commands", out.len(), cmds.len());
        }
        Ok(())
    };
    let start_ms = 1_800_000_000_000;
    for u in 0..a.users {
        apply(&mut m, &[register(u, 1, start_ms + u)?])?;
    }
    let started = Instant::now();
    let mut i = 0;
    while i < a.registers {
        let n = (batch as u64).min(a.registers - i);
        let cmds = (i..i + n)
            .map(|k| {
                register(
                    k % a.users,
                    2 + (k / a.users) as u32,
                    start_ms + a.users + k,
                )
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        apply(&mut m, &cmds)?;
        i += n;
    }
    Ok(started.elapsed().as_secs_f64() * 1e6 / a.registers as f64)
}

fn main() -> anyhow::Result<()> {
    let a = parse_args()?;
    println!(
        "apply-bench: {} users, {} REGISTERs timed per run, µs per REGISTER applied",
        a.users, a.registers
    );
    println!("batch      file    memory   memory/file");
    for &batch in &a.batches {
        let dir = a.dir.join(format!("batch-{batch}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        let file = dir.join("store.sqlite");
        let on_file = run(Db::File(file.clone()), &file, &a, batch)?;
        let in_memory = run(Db::new_memory(), &dir.join("memory.sqlite"), &a, batch)?;
        println!(
            "{batch:>5} {on_file:>9.1} {in_memory:>9.1} {:>13.2}",
            in_memory / on_file
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
