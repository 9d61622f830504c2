#!/usr/bin/env bash
# Install everything, then run the whole test suite against a real embedded PostgreSQL with pgvector.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Two pytest workers (pytest-xdist): most tests wait on a server, a subprocess or the database, so the
# suite took 406 s with two against 930 s with one when both were timed on this 2-core machine (531-631 s with
# two now, 761 tests). GROUNDING_TEST_WORKERS=0: one process.
# Each worker starts its own embedded Postgres; against one shared $GROUNDING_DATABASE_URL, tests that
# migrate down and up would pull the schema from under the other worker's, so that runs in one process.
workers=2
if [ -n "${GROUNDING_DATABASE_URL:-}" ]; then workers=0; fi
# One torch/OpenMP thread per worker with xdist: two workers each spinning two OpenMP threads on two cores
# starve each other (tests/test_realm.py + test_retro.py: 183 s with the default two threads, 65 s with one;
# the whole suite 603 s against 532 s).
if [ "${GROUNDING_TEST_WORKERS:-$workers}" != 0 ]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi
exec .venv/bin/python -m pytest -n "${GROUNDING_TEST_WORKERS:-$workers}" "$@"
