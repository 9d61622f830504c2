#!/usr/bin/env bash
# The main job on a fresh machine: install, start the embedded PostgreSQL, ingest a real repository
# (this one, by default), then ask a question about it and print the cited code.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
REPO_PATH=${1:-.}
QUESTION=${2:-"where are BM25 document frequencies updated when a snapshot becomes current?"}
NAME=${NAME:-$(basename "$(cd "$REPO_PATH" && pwd)")}
.venv/bin/grounding ingest "$REPO_PATH" --name "$NAME"
.venv/bin/grounding repos
.venv/bin/grounding ask "$NAME" "$QUESTION" -k 3
