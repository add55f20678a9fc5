#!/usr/bin/env bash
# Start a Prefect server (API + UI) on the loopback interface, in the foreground.
#
#   bash infra/prefect/start-server.sh            # http://127.0.0.1:4200 (UI), .../api (API)
#   PORT=4300 bash infra/prefect/start-server.sh  # another port
#
# Then, in every shell that runs flows or workers:
#   export PREFECT_API_URL=http://127.0.0.1:4200/api
# State (SQLite database, logs) lives in $PREFECT_HOME (default ~/.prefect). The server binds to
# 127.0.0.1 on purpose: it has no authentication; put a proxy with auth in front to expose it.
set -euo pipefail
cd "$(dirname "$0")/../.."
PREFECT=${PREFECT:-.venv/bin/prefect}
PORT=${PORT:-4200}
HOST=${HOST:-127.0.0.1}
export PREFECT_SERVER_ANALYTICS_ENABLED=${PREFECT_SERVER_ANALYTICS_ENABLED:-false}
# exec: the server is this process, so stopping the script (SIGTERM/SIGINT) stops the server.
exec "$PREFECT" server start --host "$HOST" --port "$PORT"
