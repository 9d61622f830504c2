"""The `grounding` command as a new user meets it: a fresh home, the embedded Postgres, the real encoder."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import copy_tree

# What a library prints when left alone: Python warnings (platformdirs' RuntimeDirWarning, deprecations) and
# Hugging Face's progress bars ("Loading weights: 100%|...| 103/103").
FOREIGN = re.compile(r"Warning\b|warnings\.warn|Loading weights|Fetching \d+ files|\d+/\d+ \[\d+:\d+")


def run_cli(args: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "grounding.cli", *args], env=env, capture_output=True, text=True, timeout=600
    )


def test_ingest_ask_and_repos_print_only_groundings_own_lines(tmp_path):
    src = copy_tree("click", tmp_path / "click")
    for path in sorted(src.glob("*.py"))[4:]:
        path.unlink()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("GROUNDING_", "XDG_", "HF_HUB_DISABLE", "TRANSFORMERS_"))
    }
    env["GROUNDING_HOME"] = str(tmp_path / "home")
    runs = {
        "ingest": run_cli(["ingest", str(src), "--name", "click", "-q"], env),
        "ask": run_cli(["ask", "click", "how are command line options parsed?"], env),
        "repos": run_cli(["repos"], env),
    }
    for name, done in runs.items():
        assert done.returncode == 0, (name, done.stderr)
        assert not FOREIGN.search(done.stderr), f"`grounding {name}` printed a library's output:\n{done.stderr}"
    assert "click" in runs["repos"].stdout and runs["ask"].stdout.strip()
    # -v shows what the default hides: the weights' progress bar is Hugging Face's, not ours.
    verbose = run_cli(["-v", "ask", "click", "how are command line options parsed?"], env)
    assert verbose.returncode == 0 and "Loading weights" in verbose.stderr
    # A reader that goes away (`| head -1`) ends it quietly, not with an "unexpected error".
    closed = subprocess.Popen(
        [sys.executable, "-m", "grounding.cli", "ask", "click", "how are options parsed?"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    closed.stdout.close()  # before it writes a byte: its first flush meets a closed pipe
    assert closed.wait(timeout=600) == 0 and closed.stderr.read() == ""
    # A setting that does not parse names itself, in one line.
    bad = run_cli(["repos"], {**env, "GROUNDING_CHUNK_TOKENS": "abc"})
    assert bad.returncode == 1 and bad.stderr.strip().splitlines() == [
        "grounding: error: GROUNDING_CHUNK_TOKENS must be a whole number, not 'abc'; fix it or unset it for 200"
    ]
