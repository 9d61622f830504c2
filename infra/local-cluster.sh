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
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

echo "== postgres (its own process)"
$PY -c "
import pgserver, signal, sys
server = pgserver.get_server(sys.argv[1], cleanup_mode='stop')
open(sys.argv[2], 'w').write(server.get_uri())
signal.sigwait({signal.SIGTERM, signal.SIGINT})
" "$WORK/pgdata" "$WORK/db-url" &
pids+=($!)
until [ -s "$WORK/db-url" ]; do sleep 0.5; done
export GROUNDING_DATABASE_URL=$(cat "$WORK/db-url") GROUNDING_HOME="$WORK/home"
echo "   GROUNDING_DATABASE_URL=$GROUNDING_DATABASE_URL"

echo "== prefect server on 127.0.0.1:$PORT"
export PREFECT_HOME="$WORK/prefect" PREFECT_API_URL="http://127.0.0.1:$PORT/api" PREFECT_WORKER_QUERY_SECONDS=2
$PY -m prefect server start --host 127.0.0.1 --port "$PORT" >"$WORK/server.log" 2>&1 &
pids+=($!)
until curl -sf "$PREFECT_API_URL/health" >/dev/null; do sleep 1; done

echo "== work pools and deployments"
for pool in cpu gpu; do $PY -m prefect work-pool create "$pool" --type process >/dev/null; done
$PY -m prefect --no-prompt deploy --all >"$WORK/deploy.log"

echo "== two worker processes"
for pool in cpu gpu; do
  $PY -m prefect worker start --pool "$pool" --type process --name "local-$pool" >"$WORK/worker-$pool.log" 2>&1 &
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
