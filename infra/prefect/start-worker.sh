#!/usr/bin/env bash
# Create the work pool (once) and start a process worker that runs the deployments of
# infra/prefect/prefect.yaml, in the foreground.
#
#   export PREFECT_API_URL=http://127.0.0.1:4200/api   # a server from start-server.sh
#   bash infra/prefect/start-worker.sh                 # pool "aape" (POOL=... for another)
#   .venv/bin/prefect deploy --all --prefect-file infra/prefect/prefect.yaml   # once, from the repo root
#
# A "process" worker runs each flow run as a subprocess of the worker, in this checkout and venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFECT=${PREFECT:-.venv/bin/prefect}
POOL=${POOL:-aape}
if [ -z "${PREFECT_API_URL:-}" ]; then
  echo "start-worker: set PREFECT_API_URL to a running server (see infra/prefect/start-server.sh)" >&2
  exit 2
fi
# Creating a pool that exists is an error; inspecting first keeps the script idempotent.
"$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1 \
  || "$PREFECT" work-pool create "$POOL" --type process
exec "$PREFECT" worker start --pool "$POOL" --type process
