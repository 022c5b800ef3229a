#!/usr/bin/env bash
# bench/sip.sh — SIPp REGISTER (digest auth) and MESSAGE rates at which no request fails,
# against Tandem (every acknowledged registration fsynced) and Kamailio (bench/kamailio.cfg,
# in memory), in the same run, with the same SIPp scenarios; prints both and the ratio.
#
# Each step offers RATE calls/s for DURATION seconds; a step passes when SIPp reports no failed
# call and achieved at least 90% of the offered rate. The reported figure is the best achieved
# rate of a passing step. Client, servers and SIPp share this machine's cores: the ratio is the
# figure to read, not the absolute rates.
#
#   bench/sip.sh                       # defaults
#   DURATION=10 RATES="1000 2000" bench/sip.sh
#
# Needs: sipp (sip-tester), kamailio, a release build (done here).
set -euo pipefail

DURATION=${DURATION:-5}
USERS=${USERS:-5000}
RATES=${RATES:-"500 1000 2000 3000 4000 5000 6000 7000 8000 10000 12000 14000"}
TANDEM_SIP=127.0.0.1:5070
TANDEM_ADMIN=127.0.0.1:8070
KAMAILIO_SIP=127.0.0.1:5090
DOMAIN=example.com

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
work=$(mktemp -d /tmp/tandem-bench-sip.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT

for tool in sipp kamailio; do
  command -v "$tool" >/dev/null || { echo "bench/sip.sh needs $tool (apt-get install sip-tester kamailio)" >&2; exit 1; }
done

echo "# building tandem (release)" >&2
(cd "$root" && cargo build --release -q -p tandem)
tandem="$root/target/release/tandem"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- users: the same injection files for both servers (Kamailio accepts any user with "pw")
{ echo SEQUENTIAL; for i in $(seq 1 "$USERS"); do printf 'user%04d;pw;%s\n' "$i" "$DOMAIN"; done; } > "$work/users.csv"
printf 'SEQUENTIAL\nuser0001;pw;%s;user0002\n' "$DOMAIN" > "$work/sender.csv"
printf 'SEQUENTIAL\nuser0002;pw;%s\n' "$DOMAIN" > "$work/receiver.csv"

# --- Tandem: a one-server lab, MD5 offered first (SIPp 3.6 answers only the first challenge)
cat > "$work/tandem.toml" <<EOF
name = "bench"
sip_domain = "$DOMAIN"
[[site]]
name = "dc1"
[[server]]
name = "fe1"
site = "dc1"
sip_udp = "$TANDEM_SIP"
sip_tcp = "$TANDEM_SIP"
admin = "$TANDEM_ADMIN"
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
[sip]
digest_algorithms = ["MD5", "SHA-256"]
EOF
echo "# starting tandem and provisioning $USERS users" >&2
"$tandem" lab up --topology "$work/tandem.toml" --data "$work/tandem-data" --users "$USERS" --password pw --json \
  > "$work/tandem-lab.json" 2> "$work/tandem-lab.log" &
pids+=($!)
for _ in $(seq 1 600); do
  [ -s "$work/tandem-lab.json" ] && break
  sleep 0.2
done
[ -s "$work/tandem-lab.json" ] || { echo "tandem did not start:" >&2; cat "$work/tandem-lab.log" >&2; exit 1; }

# --- Kamailio
sed "s/LISTEN_ADDR/$KAMAILIO_SIP/" "$here/kamailio.cfg" > "$work/kamailio.cfg"
kamailio -DD -E -f "$work/kamailio.cfg" -w "$work" > "$work/kamailio.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  ss -Huln "src $KAMAILIO_SIP" | grep -q . && break
  sleep 0.1
done
ss -Huln "src $KAMAILIO_SIP" | grep -q . || { echo "kamailio did not start:" >&2; cat "$work/kamailio.log" >&2; exit 1; }

# One step: prints "achieved_rate failed" for RATE offered calls/s.
step() { # target scenario csv rate [extra sipp args]
  local target=$1 scenario=$2 csv=$3 rate=$4; shift 4
  local calls=$((rate * DURATION)) port start end rc
  port=$(free_port)
  start=$(date +%s.%N)
  set +e
  timeout $((DURATION * 4 + 30)) sipp -sf "$scenario" -inf "$csv" -r "$rate" -m "$calls" -l $((rate * 3)) \
    -i 127.0.0.1 -p "$port" "$target" -recv_timeout 5000 -nostdin -trace_stat -stf "$work/stat.csv" "$@" \
    > "$work/sipp.out" 2>&1
  rc=$?
  set -e
  end=$(date +%s.%N)
  local failed
  failed=$(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) if ($i == "FailedCall(C)") col = i } END { print $col }' "$work/stat.csv" 2>/dev/null)
  rm -f "$work/stat.csv"
  python3 -c "print(f'{$calls/($end-$start):.0f} ${failed:-?} $rc')"
}

# The best achieved rate of a passing step, rates tried in increasing order.
max_rate() { # name target scenario csv [extra]
  local name=$1 target=$2 scenario=$3 csv=$4; shift 4
  local best=0
  for rate in $RATES; do
    read -r achieved failed rc < <(step "$target" "$scenario" "$csv" "$rate" "$@")
    if [ "$rc" = 0 ] && [ "$achieved" -ge $((rate * 9 / 10)) ]; then
      echo "  $name: offered $rate/s, achieved $achieved/s, no failure" >&2
      best=$achieved
    else
      echo "  $name: offered $rate/s, achieved $achieved/s, failed calls ${failed} (sipp exit $rc): stop" >&2
      break
    fi
  done
  echo "$best"
}

# MESSAGE needs a receiver: a SIPp UAS, registered as user0002 with the server under test.
with_receiver() { # target then: runs max_rate for MESSAGE
  local name=$1 target=$2
  local uas_port reg_port
  uas_port=$(free_port)
  sipp -sf "$root/sipp/message_uas.xml" -i 127.0.0.1 -p "$uas_port" -m 100000000 -nostdin > "$work/uas-$name.out" 2>&1 &
  local uas=$!
  pids+=($uas)
  reg_port=$(free_port)
  sipp -sf "$root/sipp/register_contact.xml" -inf "$work/receiver.csv" -key contact_port "$uas_port" -m 1 \
    -i 127.0.0.1 -p "$reg_port" "$target" -nostdin -timeout 10s -timeout_error > "$work/reg-$name.out" 2>&1 \
    || { echo "could not register the receiver with $name" >&2; exit 1; }
  max_rate "$name MESSAGE" "$target" "$root/sipp/message_uac.xml" "$work/sender.csv"
  kill "$uas" 2>/dev/null || true
}

echo "# REGISTER with digest authentication, ${DURATION}s per step" >&2
t_reg=$(max_rate "tandem REGISTER" "$TANDEM_SIP" "$here/register.xml" "$work/users.csv")
k_reg=$(max_rate "kamailio REGISTER" "$KAMAILIO_SIP" "$here/register.xml" "$work/users.csv")
echo "# MESSAGE relayed between two SIPp endpoints, proxy authentication, ${DURATION}s per step" >&2
t_msg=$(with_receiver tandem "$TANDEM_SIP")
k_msg=$(with_receiver kamailio "$KAMAILIO_SIP")

ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else 'n/a')"; }
echo
echo "bench/sip.sh — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, ${DURATION}s per step, rates with no failed request"
printf '%-22s %12s %12s %8s\n' "scenario" "tandem/s" "kamailio/s" "ratio"
printf '%-22s %12s %12s %8s\n' "REGISTER (digest)" "$t_reg" "$k_reg" "$(ratio "$t_reg" "$k_reg")"
printf '%-22s %12s %12s %8s\n' "MESSAGE (relayed)" "$t_msg" "$k_msg" "$(ratio "$t_msg" "$k_msg")"
echo "tandem fsyncs every acknowledged registration (group commit); kamailio keeps them in memory."
