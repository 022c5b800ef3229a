#!/usr/bin/env bash
# bench/sip.sh — SIPp REGISTER (digest auth) and MESSAGE rates at which no request fails,
# against Tandem (every acknowledged registration fsynced) and Kamailio (bench/kamailio.cfg,
# in memory), in the same run, with the same SIPp scenarios; prints both and the ratio.
#
# Each step offers RATE calls/s for DURATION seconds; the reported figure is the best rate
# achieved by a step in which SIPp saw no failed call. Steps stop at the first failed call, or
# after two steps in a row below 90% of the offered rate (the machine is saturated). Client, servers and SIPp share this machine's cores: the ratio is the
# figure to read, not the absolute rates.
#
#   bench/sip.sh                       # defaults
#   DURATION=10 RATES="1000 2000" bench/sip.sh
#
# Needs: sipp (sip-tester), kamailio, a release build (done here).
set -euo pipefail

# SIPp's socket buffers (its default, 64 KiB, drops answers that come in bursts; the same
# for both sides).
SIPP_BUFFER=${SIPP_BUFFER:-4194304}
DURATION=${DURATION:-5}
USERS=${USERS:-5000}
RATES=${RATES:-"1000 2000 4000 6000 7000 8000 9000 10000 11000 12000 14000 16000"}
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
# The work directory stays for post-mortems (SIPp error logs per step, server logs).

for tool in sipp kamailio; do
  command -v "$tool" >/dev/null || { echo "bench/sip.sh needs $tool (apt-get install sip-tester kamailio)" >&2; exit 1; }
done

echo "# building tandem (release)" >&2
(cd "$root" && cargo build --release -q -p tandem)
tandem="$root/target/release/tandem"

free_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- users: the same injection files for both servers (Kamailio accepts any user with "pw")
{ echo SEQUENTIAL; for i in $(seq 1 "$USERS"); do printf 'user%04d;pw;%s\n' "$i" "$DOMAIN"; done; } > "$work/users.csv"
# MESSAGE uses two users the REGISTER steps never touch (their contacts would be forked to).
sender=$(printf 'user%04d' $((USERS + 1)))
receiver=$(printf 'user%04d' $((USERS + 2)))
printf 'SEQUENTIAL\n%s;pw;%s;%s\n' "$sender" "$DOMAIN" "$receiver" > "$work/sender.csv"
printf 'SEQUENTIAL\n%s;pw;%s\n' "$receiver" "$DOMAIN" > "$work/receiver.csv"

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
"$tandem" lab up --topology "$work/tandem.toml" --data "$work/tandem-data" --users $((USERS + 2)) --password pw --json \
  > "$work/tandem-lab.json" 2> "$work/tandem-lab.log" &
pids+=($!)
for _ in $(seq 1 600); do
  [ -s "$work/tandem-lab.json" ] && break
  sleep 0.2
done
[ -s "$work/tandem-lab.json" ] || { echo "tandem did not start:" >&2; cat "$work/tandem-lab.log" >&2; exit 1; }

# --- Kamailio
sed "s/LISTEN_ADDR/$KAMAILIO_SIP/" "$here/kamailio.cfg" > "$work/kamailio.cfg"
# 1 GiB of shared memory: the default 64 MiB runs out (usrloc plus transactions) mid-run.
kamailio -DD -E -m 1024 -M 16 -f "$work/kamailio.cfg" -w "$work" > "$work/kamailio.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do
  ss -Huln "src $KAMAILIO_SIP" | grep -q . && break
  sleep 0.1
done
ss -Huln "src $KAMAILIO_SIP" | grep -q . || { echo "kamailio did not start:" >&2; cat "$work/kamailio.log" >&2; exit 1; }

# Every step sends from the same port, so each user keeps one contact (REGISTER refreshes it).
SIPP_PORT=$(free_port)

# One step: prints "achieved_rate failed" for RATE offered calls/s.
step() { # name target scenario csv rate [extra sipp args]
  local name=$1 target=$2 scenario=$3 csv=$4 rate=$5; shift 5
  local calls=$((rate * DURATION)) start end rc
  start=$(date +%s.%N)
  set +e
  timeout $((DURATION * 4 + 30)) sipp -sf "$scenario" -inf "$csv" -r "$rate" -m "$calls" -l $((rate * 3)) \
    -i 127.0.0.1 -p "$SIPP_PORT" "$target" -recv_timeout 5000 -buff_size "$SIPP_BUFFER" -nostdin -trace_stat -stf "$work/stat.csv" \
    -trace_err -error_file "$work/errors-${name// /-}-$rate.log" "$@" \
    > "$work/sipp.out" 2>&1
  rc=$?
  set -e
  end=$(date +%s.%N)
  local failed
  failed=$(awk -F';' 'NR==1 { for (i = 1; i <= NF; i++) if ($i == "FailedCall(C)") col = i } END { print $col }' "$work/stat.csv" 2>/dev/null)
  rm -f "$work/stat.csv"
  python3 -c "print(f'{$calls/($end-$start):.0f} ${failed:-?} $rc')"
}

# The best achieved rate of a step without any failed call. Rates go up until a step has a
# failed call, or two steps in a row fall short of 90% of the offered rate (saturated).
max_rate() { # name target scenario csv [extra]
  local name=$1 target=$2 scenario=$3 csv=$4; shift 4
  local best=0 short=0
  for rate in $RATES; do
    read -r achieved failed rc < <(step "$name" "$target" "$scenario" "$csv" "$rate" "$@")
    if [ "$rc" != 0 ]; then
      echo "  $name: offered $rate/s, achieved $achieved/s, failed calls ${failed} (sipp exit $rc): stop" >&2
      break
    fi
    echo "  $name: offered $rate/s, achieved $achieved/s, no failure" >&2
    [ "$achieved" -gt "$best" ] && best=$achieved
    if [ "$achieved" -lt $((rate * 9 / 10)) ]; then
      short=$((short + 1))
      [ "$short" -ge 2 ] && { echo "  $name: saturated: stop" >&2; break; }
    else
      short=0
    fi
  done
  echo "$best"
}

# MESSAGE needs a receiver: a SIPp UAS, registered as $receiver with the server under test.
with_receiver() { # target then: runs max_rate for MESSAGE
  local name=$1 target=$2
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
    -i 127.0.0.1 -p "$reg_port" "$target" -nostdin -timeout 10s -timeout_error > "$work/reg-$name.out" 2>&1 \
    || { echo "could not register the receiver with $name" >&2; exit 1; }
  max_rate "$name MESSAGE" "$target" "$root/sipp/message_uac.xml" "$work/sender.csv"
  kill "$uas" 2>/dev/null || true
  wait "$uas" 2>/dev/null || true
}

echo "# REGISTER with digest authentication, ${DURATION}s per step" >&2
t_reg=$(max_rate "tandem REGISTER" "$TANDEM_SIP" "$here/register.xml" "$work/users.csv")
k_reg=$(max_rate "kamailio REGISTER" "$KAMAILIO_SIP" "$here/register.xml" "$work/users.csv")
echo "# MESSAGE relayed between two SIPp endpoints, proxy authentication, ${DURATION}s per step" >&2
t_msg=$(with_receiver tandem "$TANDEM_SIP")
k_msg=$(with_receiver kamailio "$KAMAILIO_SIP")

echo "# SIPp error logs and server logs: $work" >&2
ratio() { python3 -c "print(f'{$1/$2:.2f}' if $2 else 'n/a')"; }
echo
echo "bench/sip.sh — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(nproc) cores, ${DURATION}s per step, rates with no failed request"
printf '%-22s %12s %12s %8s\n' "scenario" "tandem/s" "kamailio/s" "ratio"
printf '%-22s %12s %12s %8s\n' "REGISTER (digest)" "$t_reg" "$k_reg" "$(ratio "$t_reg" "$k_reg")"
printf '%-22s %12s %12s %8s\n' "MESSAGE (relayed)" "$t_msg" "$k_msg" "$(ratio "$t_msg" "$k_msg")"
echo "tandem fsyncs every acknowledged registration (group commit); kamailio keeps them in memory."
