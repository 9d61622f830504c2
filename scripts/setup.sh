#!/usr/bin/env bash
# Create .venv and install grounding with its test extras. Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."
can_apt() { command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; }  # a Debian machine, as root (CI)
if ! command -v git >/dev/null 2>&1; then
  if ! can_apt; then echo "setup: grounding needs git; install it and run this again" >&2; exit 1; fi
  apt-get update -qq && apt-get install -y -qq git >/dev/null
fi
# tests/test_browser.py drives Debian's headless Chromium through selenium; grounding itself does not need it.
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  if can_apt; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "setup: no chromium and chromedriver (and no apt-get as root to install them): grounding works;" \
      "tests/test_browser.py will fail until they are installed" >&2
  fi
fi
if [ ! -x .venv/bin/python ]; then
  "${PYTHON:-python3}" -m venv .venv
fi
# torch==2.13.0 is pinned in pyproject.toml: pip takes the CPU wheel from local disk.
# (This machine's pip config names a local index that may be absent: its warnings are noise.)
.venv/bin/pip install --quiet --disable-pip-version-check -e '.[test]' 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; }
