"""What the benchmarks share: a GROUNDING_HOME (reused, or temporary), one holding a copy of an installed package."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

SITE_PACKAGES = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"


@contextlib.contextmanager
def package_home(package: str, home: str | None, *, prefix: str) -> Iterator[tuple[Path, Path]]:
    """(home, source): GROUNDING_HOME set to `home` (reused across runs) or to a temporary directory,
    and the package's tree copied under it once. On the way out the embedded database stops, and a
    temporary home is removed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = Path(home) if home else Path(tempfile.mkdtemp(prefix=prefix))
    os.environ["GROUNDING_HOME"] = str(path)
    os.environ.pop("GROUNDING_DATABASE_URL", None)
    from grounding import db
    from grounding.config import reset_settings

    reset_settings()
    source = path / "src" / package
    if not source.is_dir():
        shutil.copytree(SITE_PACKAGES / package, source, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    try:
        yield path, source
    finally:
        db.reset()
        db.stop_embedded()
        if not home:
            shutil.rmtree(path, ignore_errors=True)


def corpus_home(reuse: Path | None, *, prefix: str) -> Path:
    """GROUNDING_HOME set to `reuse` (built into once, kept) or to a temporary directory removed at exit,
    after the embedded Postgres living in it has stopped (atexit runs last-in first-out)."""
    if reuse:
        home = reuse.resolve()
    else:
        home = Path(tempfile.mkdtemp(prefix=prefix))
        atexit.register(shutil.rmtree, home, ignore_errors=True)
    os.environ["GROUNDING_HOME"] = str(home)
    os.environ.setdefault("GROUNDING_WRITE_BATCH_FILES", "500")
    return home


def encoder_before(path: str, *, device: str | None = None):
    """The encoder as the pipeline ran it before bf16 and token batches: fp32, batches sorted by characters and
    tokenized one batch at a time (the Embedder base class's `embed`); the baseline of bench/encoder.py and
    bench/ingest.py --baseline."""
    from grounding.index.embed import Embedder, HFEncoder

    class CharSorted(HFEncoder):
        embed = Embedder.embed

    return CharSorted(path, device=device, precision="fp32")
