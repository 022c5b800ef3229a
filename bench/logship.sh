#!/usr/bin/env bash
# bench/logship.sh — log shipping under sustained writes, in one run on this machine:
#   (a) the shipping lag: seconds from a command's commit on the primary to its restore on
#       the secondary, p50/p99, with a 1 s backup, copy and restore interval (restore delay 0);
#   (b) restore throughput: `tandem store restore` of the whole chain the run produced
#       (full backup + log segments), in commands/s, against the primary's own commit rate
#       during the load.
# The lab: `fe1` (site dc1) serves standalone store `store1`, every commit fsynced; `dr1`
# (site dc2) holds its log-shipped copy `store1-dr`. The load is WRITERS threads adding users
# through fe1's admin API for DURATION seconds. Lag is measured on LSNs: the primary's and
# the secondary's database are read (read-only) every 50 ms; a primary LSN's commit time is
# when it was first seen there, its restore time when the secondary first held it (both
# within the 50 ms sampling). Goal (issue 5): p99 lag under 3 s, restore faster than the
# primary commits.
#
#   bench/logship.sh                    # defaults: DURATION=30 WRITERS=4
#   DURATION=10 WRITERS=2 bench/logship.sh
set -euo pipefail

DURATION=${DURATION:-30}
WRITERS=${WRITERS:-4}
DOMAIN=example.com

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=$(mktemp -d /tmp/tandem-bench-logship.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
# The work directory stays for post-mortems (server logs, the share, results.json).

echo "# building tandem (release)" >&2
(cd "$root" && cargo build --release -q -p tandem)
tandem="$root/target/release/tandem"

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
FE_ADMIN=$(port); DR_ADMIN=$(port); FE_RPC=$(port); DR_RPC=$(port); SIP=$(port)

cat > "$work/topology.toml" <<EOF
name = "logship-bench"
sip_domain = "$DOMAIN"
[[site]]
name = "dc1"
[[site]]
name = "dc2"
[[server]]
name = "fe1"
site = "dc1"
sip_udp = "127.0.0.1:$SIP"
rpc = "127.0.0.1:$FE_RPC"
admin = "127.0.0.1:$FE_ADMIN"
[[server]]
name = "dr1"
site = "dc2"
rpc = "127.0.0.1:$DR_RPC"
admin = "127.0.0.1:$DR_ADMIN"
[[pool]]
name = "pool1"
kind = "frontend"
site = "dc1"
servers = ["fe1"]
store = "store1"
routing_groups = 1
[[store]]
name = "store1"
site = "dc1"
mode = "standalone"
[[store.replica]]
server = "fe1"
role = "primary"
[[store]]
name = "store1-dr"
site = "dc2"
mode = "standalone"
[[store.replica]]
server = "dr1"
role = "primary"
[[log_shipping]]
name = "store1-dr"
primary = "store1"
secondary = "store1-dr"
share = "share"
backup_interval_s = 1
copy_interval_s = 1
restore_interval_s = 1
restore_delay_s = 0
backup_alert_s = 60
restore_alert_s = 60
secondary_mode = "standby"
retention_h = 1
EOF

echo "# starting the lab (fe1 in dc1, dr1 in dc2)" >&2
"$tandem" lab up --topology "$work/topology.toml" --data "$work/data" --json \
  > "$work/lab.json" 2> "$work/lab.log" &
pids+=($!)
for _ in $(seq 1 600); do
  [ "$(grep -c '"server"' "$work/lab.json" 2>/dev/null || true)" -ge 2 ] && break
  sleep 0.2
done
[ -s "$work/lab.json" ] || { echo "the lab did not start:" >&2; cat "$work/lab.log" >&2; exit 1; }

echo "# $WRITERS writers for ${DURATION}s; sampling both databases every 50 ms" >&2
python3 - "$work" "$FE_ADMIN" "$DR_ADMIN" "$DURATION" "$WRITERS" "$DOMAIN" <<'PY'
import json, sqlite3, sys, threading, time, urllib.request, os
work, fe_admin, dr_admin, duration, writers, domain = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
token = open(os.path.join(work, "data", "admin.token")).read().strip()
primary = os.path.join(work, "data", "fe1", "stores", "store1", "store.sqlite")
secondary = os.path.join(work, "data", "dr1", "stores", "store1-dr", "store.sqlite")

def lsn(path):
    try:
        c = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return c.execute("SELECT value FROM meta WHERE key = 'lsn'").fetchone()[0]
        finally:
            c.close()
    except Exception:
        return None

stop = threading.Event()
acked = [0] * writers
errors = [0] * writers
def writer(w):
    n = 0
    while not stop.is_set():
        n += 1
        body = json.dumps({"aor": f"sip:w{w}-{n}@{domain}", "password": "pw"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{fe_admin}/api/v1/users", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                if r.status == 201:
                    acked[w] += 1
                else:
                    errors[w] += 1
        except Exception:
            errors[w] += 1

first_seen = {}   # primary LSN -> when first seen there
restored_at = {}  # primary sample LSN -> when the secondary first held it
samples = []
start_lsn = lsn(primary) or 0
t0 = time.time()
threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
for t in threads:
    t.start()
pending = []
deadline = t0 + duration
while True:
    now = time.time()
    if now >= deadline and not stop.is_set():
        stop.set()
        end_lsn = lsn(primary)
        t_end = now
    p, s = lsn(primary), lsn(secondary)
    if p is not None and p not in first_seen and not stop.is_set():
        first_seen[p] = now
        pending.append(p)
    if s is not None:
        while pending and pending[0] <= s:
            restored_at[pending.pop(0)] = now
    if stop.is_set() and not pending:
        break
    if now > deadline + 60:
        print(f"the secondary did not catch up within 60 s: {len(pending)} samples pending", file=sys.stderr)
        break
    time.sleep(0.05)
for t in threads:
    t.join()
lags = sorted(restored_at[k] - first_seen[k] for k in restored_at)
def pct(v, q):
    return v[min(len(v) - 1, int(q * len(v)))] if v else float("nan")
result = {
    "duration_s": duration, "writers": writers,
    "acked": sum(acked), "errors": sum(errors),
    "primary_commands": end_lsn - start_lsn,
    "primary_commit_rate": (end_lsn - start_lsn) / (t_end - t0),
    "lag_samples": len(lags), "lag_p50_s": pct(lags, 0.5), "lag_p99_s": pct(lags, 0.99),
    "lag_max_s": lags[-1] if lags else float("nan"),
}
json.dump(result, open(os.path.join(work, "load.json"), "w"))
PY

echo "# restoring the whole chain into a new database" >&2
t0=$(date +%s.%N)
"$tandem" store restore store1 --from "$work/data/share" --into "$work/restored.sqlite" --json > "$work/restore.json"
t1=$(date +%s.%N)
python3 - "$work" "$t0" "$t1" <<'PY'
import json, os, sys
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
load = json.load(open(os.path.join(work, "load.json")))
restore = json.load(open(os.path.join(work, "restore.json")))
secs = t1 - t0
rate = restore["lsn"] / secs
load["restore"] = {"lsn": restore["lsn"], "seconds": secs, "commands_per_s": rate, "segments": restore["segments"]}
json.dump(load, open(os.path.join(work, "results.json"), "w"), indent=2)
print(f"load: {load['writers']} writers for {load['duration_s']:.0f} s: {load['acked']} users added "
      f"({load['errors']} errors); primary committed {load['primary_commands']} commands, "
      f"{load['primary_commit_rate']:.0f}/s (each fsynced)")
print(f"shipping lag (commit on the primary -> restored on the secondary; 1 s intervals, no delay), "
      f"{load['lag_samples']} samples: p50 {load['lag_p50_s']:.2f} s, p99 {load['lag_p99_s']:.2f} s, "
      f"max {load['lag_max_s']:.2f} s  (goal: p99 under 3 s -> {'met' if load['lag_p99_s'] < 3 else 'NOT met'})")
print(f"restore: {restore['lsn']} commands (full backup + {restore['segments']} segments) in {secs:.2f} s = "
      f"{rate:.0f} commands/s = {rate / load['primary_commit_rate']:.1f} x the primary's commit rate "
      f"(goal: above 1 -> {'met' if rate > load['primary_commit_rate'] else 'NOT met'})")
print(f"(all figures: {os.path.join(work, 'results.json')})")
PY
