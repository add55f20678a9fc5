#!/usr/bin/env bash
# Start a Ray head node (a one-machine cluster, or the head of a bigger one) and print its address.
#
#   bash infra/ray/start-head.sh                    # 127.0.0.1:6379, all CPUs
#   PORT=6390 CLIENT_PORT=10002 NUM_CPUS=2 RAY_TMPDIR=/tmp/ray2 bash infra/ray/start-head.sh
#   export AAPE_RAY_ADDRESS=127.0.0.1:6379           # flows now shard over this cluster
#   bash infra/ray/stop.sh                           # stop every Ray process of this user
#   PORT=6390 RAY_TMPDIR=/tmp/ray2 bash infra/ray/stop.sh   # stop only the second cluster
#
# Other machines join with `ray start --address=HEAD_IP:PORT` (same venv, same code version);
# for that, start the head with NODE_IP=<a reachable address>. The default binds to loopback.
set -euo pipefail
cd "$(dirname "$0")/../.."
RAY=${RAY:-.venv/bin/ray}
PORT=${PORT:-6379}
NODE_IP=${NODE_IP:-127.0.0.1}
args=(start --head --port "$PORT" --node-ip-address "$NODE_IP" --include-dashboard=false
      --disable-usage-stats)
[ -n "${NUM_CPUS:-}" ] && args+=(--num-cpus "$NUM_CPUS")
# The Ray client server (ray://HOST:10001); a second cluster on one machine needs another port.
[ -n "${CLIENT_PORT:-}" ] && args+=(--ray-client-server-port "$CLIENT_PORT")
# Ray spills objects and keeps logs under its temp dir; keep it short (a unix socket path limit).
[ -n "${RAY_TMPDIR:-}" ] && args+=(--temp-dir "$RAY_TMPDIR")
"$RAY" "${args[@]}"
echo "ray head: $NODE_IP:$PORT"
