"""bench/gpu_check.sh, the one script a lent GPU machine runs, works: here at its tiny size, on the CPU."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "activate").is_file(), reason="gpu_check.sh runs in the project venv")
def test_gpu_check_runs_end_to_end_at_a_tiny_size_on_the_cpu(tmp_path):
    env = {
        **os.environ,
        "GPU_CHECK_TINY": "1",
        "OUT": str(tmp_path / "out"),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("GROUNDING_HOME", None)  # each bench makes its own home, with its own embedded database
    env.pop("GROUNDING_DATABASE_URL", None)
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for line in ("pre-training throughput:", "steps/s", "reader tokens/s", "peak", "reader warm-up:", "utility of"):
        assert line in done.stdout, done.stdout[-3000:]
    realm = json.loads((tmp_path / "out" / "realm.json").read_text())
    assert realm["training"]["reader_warmup_steps"] == 4 and realm["training"]["pretrain_steps"] == 3
    assert json.loads((tmp_path / "out" / "retro.json").read_text())
