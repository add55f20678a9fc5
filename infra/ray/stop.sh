#!/usr/bin/env bash
# Stop a Ray cluster started by start-head.sh on this machine.
#
#   RAY_TMPDIR=/tmp/rayx PORT=6390 bash infra/ray/stop.sh   # only the cluster started with these
#   bash infra/ray/stop.sh                                 # `ray stop`: every Ray process of this user
#
# With RAY_TMPDIR (and PORT), only that cluster's processes are signalled: Ray passes its temp dir
# to every daemon, and its client server names the head's port. Another cluster is left alone.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ -z "${RAY_TMPDIR:-}" ]; then
  exec "${RAY:-.venv/bin/ray}" stop --force
fi
pids=$(pgrep -f -- "$RAY_TMPDIR" || true)
if [ -n "${PORT:-}" ]; then
  pids="$pids $(pgrep -f -- "ray.util.client.server --address=[^ ]*:${PORT} " || true)"
fi
pids=$(echo $pids)
[ -z "$pids" ] && exit 0
# shellcheck disable=SC2086
kill -TERM $pids 2>/dev/null || true
alive=$pids
for _ in $(seq 50); do
  alive=$(for p in $alive; do if kill -0 "$p" 2>/dev/null; then echo "$p"; fi; done)
  [ -z "$alive" ] && exit 0
  sleep 0.2
done
# shellcheck disable=SC2086
kill -KILL $alive 2>/dev/null || true
