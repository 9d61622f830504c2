#!/usr/bin/env bash
# Install everything, then run the whole test suite against a real embedded PostgreSQL with pgvector.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest "$@"
