#!/usr/bin/env bash
# bench/store.sh — the replicated store's modes against etcd, in one run on this machine:
#   (a) commit throughput and p50/p99 latency, and server CPU-s per 1000 commits, at 1, 16 and
#       64 writers, of three Tandem stores — each on three `tandem server` processes, written
#       through the listener with the front end's store client:
#         tandem AG      a 3-replica synchronous availability group;
#         tandem mirror  high-safety mirroring: principal, mirror and witness (every commit
#                        waits for the mirror);
#         tandem FC      a 3-node failover cluster: the owner writes one SQLite database on
#                        shared storage, fsynced per group commit;
#       and of a 3-member etcd cluster (gRPC); ratios against the AG and against etcd;
#   (b) failover: kill -9 of the primary (mirror: the principal; FC: the owner; etcd: the
#       leader; never a witness) → first successful write, over 20 kills, default timing
#       everywhere;
#   (c) the floor: one 4 KiB fdatasync and one loopback round trip, measured in the same run.
# Every system fsyncs every commit before acknowledging it (AG and etcd on a majority, the
# mirror session on principal and mirror, FC on the shared disk). The machine is shared by
# clients and servers: read the ratios, not the absolute rates.
#
#   bench/store.sh                                  # defaults
#   DURATION=5 KILLS=5 WRITERS=1,16 bench/store.sh  # shorter
#   MODES=ag,fc bench/store.sh                      # some Tandem modes only (default ag,mirror,fc)
#
# Needs: etcd (Debian etcd-server) and protoc (protobuf-compiler, to build the etcd client).
set -euo pipefail

DURATION=${DURATION:-10}
KILLS=${KILLS:-20}
WRITERS=${WRITERS:-1,16,64}
MODES=${MODES:-ag,mirror,fc}

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
for tool in etcd protoc; do
  command -v "$tool" >/dev/null || { echo "bench/store.sh needs $tool (apt-get install etcd-server protobuf-compiler)" >&2; exit 1; }
done
work=$(mktemp -d /tmp/tandem-bench-store.XXXXXX)
# The work directory stays for post-mortems (server and etcd logs, results.json).

echo "# building tandem and the bench driver (release)" >&2
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p tandem
cargo build --release --quiet --manifest-path "$here/store-bench/Cargo.toml" --target-dir "$root/target"

echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(nproc) cores; work dir $work" >&2
exec "$root/target/release/store-bench" \
  --tandem "$root/target/release/tandem" --etcd "$(command -v etcd)" --work "$work" \
  --duration "$DURATION" --kills "$KILLS" --writers "$WRITERS" --modes "$MODES"
