#!/usr/bin/env bash
# The distributed path on one machine, each part its own process on loopback: a PostgreSQL with pgvector,
# a Prefect server, and a `cpu` and a `gpu` worker. A flow run is scheduled on pool `cpu` through the
# Prefect API, executed by the cpu worker process, and its chunks are read back from the shared Postgres.
#   bash infra/local-cluster.sh [SOURCE_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
SOURCE=${1:-$($PY -c 'import requests, os; print(os.path.dirname(requests.__file__))')}
WORK=$(mktemp -d /tmp/grounding-cluster-XXXXXX)
PORT=${PORT:-4290}
pids=()  # each part leads its own process group (setsid), so a stop reaches the children it started too
stop() {  # SIGTERM to the group, then SIGKILL if it has not ended within 10 s (Prefect's workers can hang)
  kill -TERM -- "-$1" 2>/dev/null || return 0
  for _ in $(seq 20); do kill -0 -- "-$1" 2>/dev/null || return 0; sleep 0.5; done
  kill -KILL -- "-$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true  # reaped here, so bash does not report the kill
}
cleanup() {  # the reverse of the start order: workers before the server they poll, Postgres last
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do stop "${pids[i]}"; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== postgres (its own process)"
setsid $PY -W ignore -c "
import pgserver, signal, sys
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})  # for sigwait, not the default death
server = pgserver.get_server(sys.argv[1], cleanup_mode='stop')
open(sys.argv[2], 'w').write(server.get_uri())
signal.sigwait({signal.SIGTERM, signal.SIGINT})
server.cleanup()  # stops the postmaster: an orphaned one would outlive the data directory removed below
" "$WORK/pgdata" "$WORK/db-url" &
pids+=($!)
until [ -s "$WORK/db-url" ]; do sleep 0.5; done
export GROUNDING_DATABASE_URL=$(cat "$WORK/db-url") GROUNDING_HOME="$WORK/home"
echo "   GROUNDING_DATABASE_URL=$GROUNDING_DATABASE_URL"

echo "== prefect server on 127.0.0.1:$PORT"
export PREFECT_HOME="$WORK/prefect" PREFECT_API_URL="http://127.0.0.1:$PORT/api" PREFECT_WORKER_QUERY_SECONDS=2
setsid $PY -m prefect server start --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
pids+=($!)
until $PY -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)" "$PREFECT_API_URL/health" 2>/dev/null; do sleep 1; done

echo "== work pools and deployments"
for pool in cpu gpu; do $PY -m prefect work-pool create "$pool" --type process >/dev/null; done
$PY -m prefect --no-prompt deploy --all >"$WORK/deploy.log"

echo "== two worker processes"
for pool in cpu gpu; do
  setsid $PY -m prefect worker start --pool "$pool" --type process --name "local-$pool" >"$WORK/worker-$pool.log" 2>&1 &
  pids+=($!)
done

echo "== prefect deployment run ingest-repo/default -p source=$SOURCE"
if ! $PY -m prefect deployment run ingest-repo/default -p "source=$SOURCE" -p name=cluster-demo \
    --watch --watch-timeout 900 >"$WORK/run.log" 2>&1; then
  tail -40 "$WORK/worker-cpu.log"; exit 1
fi
grep -E "Flow run|finished" "$WORK/run.log" || true
echo "== executed by:"
grep -h "Worker 'local-cpu'.*submitting\|Completed submission\|Opening process" "$WORK/worker-cpu.log" | head -3 || true
echo "== in the shared Postgres:"
$PY -m grounding.cli repos
