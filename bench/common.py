"""What the training benchmarks share: a GROUNDING_HOME holding a copy of an installed package."""

from __future__ import annotations

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
