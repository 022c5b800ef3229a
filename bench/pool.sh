#!/usr/bin/env bash
# bench/pool.sh — a 3-server Tandem front-end pool against a pair of Kamailio registrars that
# replicate registrations with DMQ (bench/kamailio-dmq.cfg), in the same run:
#
#  (a) SIPp REGISTER (digest auth) and MESSAGE rates at which no request fails, the load
#      spread over every server of each side (one SIPp per server, users split between them);
#      then REGISTER offered at OVERLOAD (1.5) × each side's best clean rate: how much of it
#      still succeeds (past capacity a server should refuse the excess, not serve all late);
#      Each step also reports the CPU its side's servers used per successful call (every
#      tandem server process; every process of both Kamailio instances), from /proc;
#  (b) the time until every routing group serves again after a `kill -9` of one Tandem server
#      (p50/p99 over KILLS kills, each server in turn, restarted and healthy between kills),
#      against the 2 s limit; and the time from the killed server's restart until every group
#      is fully replicated again (its groups' in-memory databases rebuilt from their snapshots
#      and logs, and caught up).
#
# Tandem acknowledges a registration once two of the three replicas of the user's routing
# group fsynced it; Kamailio keeps it in memory and copies it to its peer after answering.
# Clients, servers and SIPp share this machine's cores: read the ratios, not the rates.
#
#   bench/pool.sh
#   DURATION=10 KILLS=20 RATES="500 1000 2000" bench/pool.sh
#
# Needs: sipp (sip-tester), kamailio, python3, a release build (done here).
set -euo pipefail

# SIPp's socket buffers (its default, 64 KiB, drops answers that come in bursts; the same
# for both sides).
SIPP_BUFFER=${SIPP_BUFFER:-4194304}
DURATION=${DURATION:-5}
USERS=${USERS:-6000}
RATES=${RATES:-"600 1200 2400 3600 4800 6000 7200 8400 9600 10800 12000 14400"}
KILLS=${KILLS:-10}
OVERLOAD=${OVERLOAD:-1.5}
# More lines for the Tandem topology's [sip] table, e.g. overload control off for an A/B run:
#   TANDEM_SIP=$'max_queue_delay_ms = 10000\nmax_pending_requests = 1000000' bench/pool.sh
TANDEM_SIP=${TANDEM_SIP:-}
GROUPS_N=${GROUPS_N:-16}
LIMIT_MS=2000
DOMAIN=example.com
TANDEM_IPS=(127.0.0.51 127.0.0.52 127.0.0.53)
KAMAILIO_IPS=(127.0.0.61 127.0.0.62)
SIP_PORT=5090

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=$(mktemp -d /tmp/tandem-bench-pool.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/restarted.pids" ] && while read -r p; do kill -9 "$p" 2>/dev/null || true; done < "$work/restarted.pids"
  wait 2>/dev/null || true
}
trap cleanup EXIT
# The work directory stays for post-mortems (SIPp error logs per step, server logs).

for tool in sipp kamailio python3; do
  command -v "$tool" >/dev/null || { echo "bench/pool.sh needs $tool (apt-get install sip-tester kamailio)" >&2; exit 1; }
done

echo "# building tandem (release)" >&2
(cd "$root" && cargo build --release -q -p tandem)
tandem="$root/target/release/tandem"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- users, split between the servers of a side (file users-N-I.csv: users I, I+N, …)
for n in 2 3; do
  for i in $(seq 0 $((n - 1))); do
    { echo SEQUENTIAL
      for u in $(seq 1 "$USERS"); do
        [ $(((u - 1) % n)) -eq "$i" ] && printf 'user%04d;pw;%s\n' "$u" "$DOMAIN"
      done
    } > "$work/users-$n-$i.csv"
  done
done
sender=$(printf 'user%04d' $((USERS + 1)))
receiver=$(printf 'user%04d' $((USERS + 2)))
printf 'SEQUENTIAL\n%s;pw;%s;%s\n' "$sender" "$DOMAIN" "$receiver" > "$work/sender.csv"
printf 'SEQUENTIAL\n%s;pw;%s\n' "$receiver" "$DOMAIN" > "$work/receiver.csv"

# --- Tandem: fe1..fe3 in one pool; the pool's store an availability group on the same three
{
  echo "name = \"bench-pool\""
  echo "sip_domain = \"$DOMAIN\""
  echo "[[site]]"
  echo "name = \"dc1\""
  for i in 0 1 2; do
    ip=${TANDEM_IPS[$i]}
    cat <<EOF
[[server]]
name = "fe$((i + 1))"
site = "dc1"
sip_udp = "$ip:$SIP_PORT"
sip_tcp = "$ip:$SIP_PORT"
rpc = "$ip:7090"
admin = "$ip:8090"
EOF
  done
  cat <<EOF
[[pool]]
name = "pool1"
kind = "frontend"
site = "dc1"
servers = ["fe1", "fe2", "fe3"]
store = "store"
routing_groups = $GROUPS_N
[[store]]
name = "store"
site = "dc1"
mode = "availability-group"
listener = "${TANDEM_IPS[0]}:7190"
[[store.replica]]
server = "fe1"
role = "primary"
[[store.replica]]
server = "fe2"
role = "secondary"
commit = "sync"
failover = "automatic"
[[store.replica]]
server = "fe3"
role = "secondary"
commit = "sync"
failover = "automatic"
[sip]
digest_algorithms = ["MD5", "SHA-256"]
$TANDEM_SIP
EOF
} > "$work/tandem.toml"
echo "# starting the tandem pool and provisioning $USERS users" >&2
"$tandem" lab up --topology "$work/tandem.toml" --data "$work/tandem-data" --users $((USERS + 2)) --password pw --json \
  > "$work/tandem-lab.json" 2> "$work/tandem-lab.log" &
pids+=($!)
for _ in $(seq 1 1200); do
  [ "$(wc -l < "$work/tandem-lab.json")" -ge 3 ] && break
  sleep 0.2
done
[ "$(wc -l < "$work/tandem-lab.json")" -ge 3 ] || { echo "tandem did not start:" >&2; cat "$work/tandem-lab.log" >&2; exit 1; }

# --- Kamailio: two instances, each the other's DMQ peer
for i in 0 1; do
  me=${KAMAILIO_IPS[$i]}:$SIP_PORT
  peer=${KAMAILIO_IPS[$((1 - i))]}:$SIP_PORT
  sed -e "s/LISTEN_ADDR/$me/g" -e "s/PEER_ADDR/$peer/g" "$here/kamailio-dmq.cfg" > "$work/kamailio-$i.cfg"
  mkdir -p "$work/kamailio-$i"
  kamailio -DD -E -m 1024 -M 16 -f "$work/kamailio-$i.cfg" -w "$work/kamailio-$i" -P "$work/kamailio-$i.pid" \
    > "$work/kamailio-$i.log" 2>&1 &
  pids+=($!)
done
for i in 0 1; do
  for _ in $(seq 1 100); do
    ss -Huln "src ${KAMAILIO_IPS[$i]}:$SIP_PORT" | grep -q . && break
    sleep 0.1
  done
  ss -Huln "src ${KAMAILIO_IPS[$i]}:$SIP_PORT" | grep -q . || { echo "kamailio $i did not start:" >&2; cat "$work/kamailio-$i.log" >&2; exit 1; }
done

# Each SIPp of a side sends from its own port, kept across steps (a user keeps one contact).
declare -A SIPP_PORTS
port_of() { # target
  [ -n "${SIPP_PORTS[$1]:-}" ] || SIPP_PORTS[$1]=$(free_port)
  echo "${SIPP_PORTS[$1]}"
}
for ip in "${TANDEM_IPS[@]}" "${KAMAILIO_IPS[@]}"; do port_of "$ip:$SIP_PORT" > /dev/null; done

# The server processes of a side: the tandem servers the lab started, or every process of
# both Kamailio instances.
side_pids() { # step name
  case $1 in
    tandem*) python3 -c "import json, sys; [print(json.loads(l)['pid']) for l in open(sys.argv[1]) if 'pid' in l]" "$work/tandem-lab.json" ;;
    kamailio*) pgrep -f "$work/kamailio-[01].cfg" ;;
  esac
}
# CPU time (user + system, clock ticks) the processes have used.
cpu_ticks() { # pids...
  local sum=0 p f
  for p in "$@"; do
    { read -r -a f < "/proc/$p/stat"; } 2>/dev/null || continue
    sum=$((sum + f[13] + f[14]))
  done
  echo "$sum"
}
HZ=$(getconf CLK_TCK)

# One step: RATE calls/s in total, split between the targets (one SIPp each, with csv
# files prefix-0.csv, prefix-1.csv, …, or one csv for all). Prints "achieved failed rc
# succeeded_per_s server_cpu_us_per_successful_call".
step() { # name rate scenario csv_prefix targets...
  local name=$1 rate=$2 scenario=$3 csv=$4; shift 4
  local targets=("$@") n=$# each calls start end rc=0 failed=0 succeeded=0 i servers cpu0 cpu1
  each=$(( (rate + n - 1) / n ))
  calls=$((each * DURATION))
  local sp=()
  mapfile -t servers < <(side_pids "$name")
  cpu0=$(cpu_ticks "${servers[@]}")
  start=$(date +%s.%N)
  for i in $(seq 0 $((n - 1))); do
    local file=$csv
    [ -f "$csv-$i.csv" ] && file="$csv-$i.csv"
    timeout $((DURATION * 4 + 30)) sipp -sf "$scenario" -inf "$file" -r "$each" -m "$calls" -l $((each * 3)) \
      -i 127.0.0.1 -p "$(port_of "${targets[$i]}")" "${targets[$i]}" -recv_timeout 5000 -buff_size "$SIPP_BUFFER" -nostdin \
      -trace_stat -stf "$work/stat-$i.csv" -trace_err -error_file "$work/errors-${name// /-}-$rate-$i.log" \
      > "$work/sipp-$i.out" 2>&1 &
    sp+=($!)
  done
  for i in $(seq 0 $((n - 1))); do
    wait "${sp[$i]}" || rc=$?
    local f s
    f=$(awk -F';' 'NR==1 { for (c = 1; c <= NF; c++) if ($c == "FailedCall(C)") col = c } END { print $col }' "$work/stat-$i.csv" 2>/dev/null)
    s=$(awk -F';' 'NR==1 { for (c = 1; c <= NF; c++) if ($c == "SuccessfulCall(C)") col = c } END { print $col }' "$work/stat-$i.csv" 2>/dev/null)
    failed=$((failed + ${f:-1}))
    succeeded=$((succeeded + ${s:-0}))
    rm -f "$work/stat-$i.csv"
  done
  end=$(date +%s.%N)
  cpu1=$(cpu_ticks "${servers[@]}")
  python3 -c "print(f'{$((calls * n))/($end-$start):.0f} $failed $rc {$succeeded/($end-$start):.0f} {($cpu1-$cpu0)/$HZ*1e6/max($succeeded,1):.0f}')"
}

# The best achieved rate of a step without any failed call, and the servers' CPU per call in
# that step; rates go up until a step has a failed call, or two steps in a row fall short of
# 90% of the offered rate (saturated).
max_rate() { # name scenario csv_prefix targets...
  local name=$1 scenario=$2 csv=$3; shift 3
  local best=0 best_cpu=0 short=0
  for rate in $RATES; do
    read -r achieved failed rc _ cpu < <(step "$name" "$rate" "$scenario" "$csv" "$@")
    if [ "$rc" != 0 ] || [ "$failed" != 0 ]; then
      echo "  $name: offered $rate/s, achieved $achieved/s, failed calls $failed (sipp exit $rc): stop" >&2
      break
    fi
    echo "  $name: offered $rate/s, achieved $achieved/s, no failure, servers' CPU $cpu µs per call" >&2
    [ "$achieved" -gt "$best" ] && { best=$achieved; best_cpu=$cpu; }
    if [ "$achieved" -lt $((rate * 9 / 10)) ]; then
      short=$((short + 1))
      [ "$short" -ge 2 ] && { echo "  $name: saturated: stop" >&2; break; }
    else
      short=0
    fi
  done
  echo "$best $best_cpu"
}

# MESSAGE: a SIPp UAS registered as $receiver through the first server; senders through every
# server of the side (Tandem relays through the server holding the receiver; Kamailio finds
# the receiver's contact in the location table DMQ copied).
with_receiver() { # name targets...
  local name=$1; shift
  local uas_port reg_port
  uas_port=$(free_port)
  sipp -sf "$root/sipp/message_uas.xml" -i 127.0.0.1 -p "$uas_port" -m 100000000 -nostdin > "$work/uas-$name.out" 2>&1 &
  local uas=$!
  pids+=($uas)
  for _ in $(seq 1 100); do
    ss -Huln "src 127.0.0.1:$uas_port" | grep -q . && break
    sleep 0.05
  done
  reg_port=$(free_port)
  sipp -sf "$root/sipp/register_contact.xml" -inf "$work/receiver.csv" -key contact_port "$uas_port" -m 1 \
    -i 127.0.0.1 -p "$reg_port" "$1" -nostdin -timeout 10s -timeout_error > "$work/reg-$name.out" 2>&1 \
    || { echo "could not register the receiver with $name" >&2; exit 1; }
  # Give DMQ's copy to the peer (asynchronous) a moment: a 404 from the peer would count.
  sleep 1
  max_rate "$name MESSAGE" "$root/sipp/message_uac.xml" "$work/sender.csv" "$@"
  kill "$uas" 2>/dev/null || true
  wait "$uas" 2>/dev/null || true
}

tandem_targets=()
for ip in "${TANDEM_IPS[@]}"; do tandem_targets+=("$ip:$SIP_PORT"); done
kamailio_targets=()
for ip in "${KAMAILIO_IPS[@]}"; do kamailio_targets+=("$ip:$SIP_PORT"); done

echo "# REGISTER with digest authentication, ${DURATION}s per step, load on every server" >&2
read -r t_reg t_reg_cpu < <(max_rate "tandem-pool REGISTER" "$here/register.xml" "$work/users-3" "${tandem_targets[@]}")
read -r k_reg k_reg_cpu < <(max_rate "kamailio-dmq REGISTER" "$here/register.xml" "$work/users-2" "${kamailio_targets[@]}")
# Overload: REGISTER offered at OVERLOAD × a side's best clean rate; how many succeed per second
# (a server past capacity should answer the excess at once, 503, and keep serving the rest).
overload() { # name best targets...
  local name=$1 best=$2 csv=$3; shift 3
  local rate achieved failed rc succeeded
  rate=$(python3 -c "print(int($best * $OVERLOAD))")
  read -r achieved failed rc succeeded _ < <(step "$name overload" "$rate" "$here/register.xml" "$csv" "$@")
  echo "  $name: offered $rate/s ($OVERLOAD × $best), $succeeded/s succeeded, $failed failed calls" >&2
  echo "$rate $succeeded"
}
echo "# REGISTER overload: ${OVERLOAD} × each side's best clean rate" >&2
read -r t_over_rate t_over < <(overload "tandem-pool REGISTER" "$t_reg" "$work/users-3" "${tandem_targets[@]}")
read -r k_over_rate k_over < <(overload "kamailio-dmq REGISTER" "$k_reg" "$work/users-2" "${kamailio_targets[@]}")
echo "# MESSAGE relayed between two SIPp endpoints, proxy authentication, ${DURATION}s per step" >&2
read -r t_msg t_msg_cpu < <(with_receiver tandem-pool "${tandem_targets[@]}")
read -r k_msg k_msg_cpu < <(with_receiver kamailio-dmq "${kamailio_targets[@]}")

# --- (b) kill -9 of one server at a time; time until every group serves again
echo "# $KILLS kills of one tandem server (each in turn), restarted and healthy in between" >&2
python3 - "$work" "$tandem" "$KILLS" "$work/restarted.pids" <<'PY' > "$work/kills.txt"
import json, os, signal, subprocess, sys, time, urllib.request
work, tandem, kills, restarted = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
data = os.path.join(work, "tandem-data")
token = open(os.path.join(data, "admin.token")).read().strip()
servers = {}
for line in open(os.path.join(work, "tandem-lab.json")):
    s = json.loads(line)
    servers[s["server"]] = s
def status(via):
    req = urllib.request.Request(f"http://{servers[via]['admin']}/api/v1/pools/pool1/status",
                                 headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)
    except Exception:
        return None
def wait(via, pred, limit=120):
    end = time.time() + limit
    while time.time() < end:
        st = status(via)
        if st is not None and pred(st):
            return st
        time.sleep(0.02)
    raise SystemExit(f"pool status via {via} never satisfied the condition")
serving = lambda st: all(g["serving"] for g in st["groups"])
healthy = lambda st: st["state"] == "healthy"
names = sorted(servers)
times = []
# From a killed server's restart to every group fully replicated again: the restarted server
# rebuilds its groups' in-memory databases from their snapshots and logs and catches up.
rejoins = []
restarted_at = None
def rejoined(via):
    global restarted_at
    wait(via, healthy)
    if restarted_at is not None:
        rejoins.append((time.time() - restarted_at) * 1000)
        restarted_at = None
for k in range(kills):
    victim = names[k % len(names)]
    via = names[(k + 1) % len(names)]
    rejoined(via)
    before = {g["id"]: g["primary"] for g in status(via)["groups"]}
    t0 = time.time()
    os.kill(servers[victim]["pid"], signal.SIGKILL)
    st = wait(via, lambda st: serving(st) and all(g["primary"] != victim for g in st["groups"]))
    took = (time.time() - t0) * 1000
    moved = sum(1 for v in before.values() if v == victim)
    times.append(took)
    print(f"  kill {k + 1}: {victim} (primary of {moved} groups): every group serving after {took:.0f} ms",
          file=sys.stderr)
    log = open(os.path.join(data, victim, "server.restarted.log"), "a")
    p = subprocess.Popen([tandem, "server", "--topology", os.path.join(work, "tandem.toml"), "--name", victim,
                          "--data", os.path.join(data, victim), "--admin-token-file", os.path.join(data, "admin.token"),
                          "--cluster-secret-file", os.path.join(data, "cluster.secret")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log)
    restarted_at = time.time()
    p.stdout.readline()
    servers[victim]["pid"] = p.pid
    with open(restarted, "a") as f:
        f.write(f"{p.pid}\n")
rejoined(names[0])
times.sort()
rejoins.sort()
pct = lambda xs, q: xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]
print(f"{pct(times, 0.5):.0f} {pct(times, 0.99):.0f} {times[-1]:.0f} "
      f"{pct(rejoins, 0.5):.0f} {pct(rejoins, 0.99):.0f} {rejoins[-1]:.0f}")
PY
read -r k_p50 k_p99 k_max r_p50 r_p99 r_max < "$work/kills.txt"

echo "# SIPp error logs and server logs: $work" >&2
ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else 'n/a')"; }
echo
echo "bench/pool.sh — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, ${DURATION}s per step, rates with no failed request"
printf '%-22s %14s %16s %8s\n' "scenario" "tandem pool/s" "kamailio pair/s" "ratio"
printf '%-22s %14s %16s %8s\n' "REGISTER (digest)" "$t_reg" "$k_reg" "$(ratio "$t_reg" "$k_reg")"
printf '%-22s %14s %16s %8s\n' "MESSAGE (relayed)" "$t_msg" "$k_msg" "$(ratio "$t_msg" "$k_msg")"
echo "tandem: 3 servers, $GROUPS_N routing groups, each registration fsynced on 2 of 3 replicas before the 200;"
echo "kamailio: 2 servers, in memory, DMQ copies each registration to the peer after the 200."
echo
echo "servers' CPU per successful call at each side's best clean step, µs (all of a side's server processes)"
printf '%-22s %14s %16s %8s\n' "scenario" "tandem pool" "kamailio pair" "ratio"
printf '%-22s %14s %16s %8s\n' "REGISTER (digest)" "$t_reg_cpu" "$k_reg_cpu" "$(ratio "$t_reg_cpu" "$k_reg_cpu")"
printf '%-22s %14s %16s %8s\n' "MESSAGE (relayed)" "$t_msg_cpu" "$k_msg_cpu" "$(ratio "$t_msg_cpu" "$k_msg_cpu")"
echo
echo "REGISTER overload, offered ${OVERLOAD} × the side's clean rate: succeeded per second, and as a share of the clean rate"
printf '%-22s %14s %16s\n' "" "tandem pool" "kamailio pair"
printf '%-22s %14s %16s\n' "offered/s" "$t_over_rate" "$k_over_rate"
printf '%-22s %14s %16s\n' "succeeded/s" "$t_over" "$k_over"
printf '%-22s %14s %16s\n' "succeeded / clean" "$(ratio "$t_over" "$t_reg")" "$(ratio "$k_over" "$k_reg")"
echo
echo "kill -9 of one of 3 servers, $KILLS kills: every group serving again after p50 ${k_p50} ms, p99 ${k_p99} ms (max ${k_max} ms)"
echo "p99 / the ${LIMIT_MS} ms limit: $(ratio "$k_p99" "$LIMIT_MS")"
echo "the killed server restarted: every group fully replicated again after p50 ${r_p50} ms, p99 ${r_p99} ms (max ${r_max} ms)"
