"""The cache of prepared splits of the bundled datasets (see :mod:`tuner.data`)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from tuner.data.dataset import Splits

SPLIT_ARRAYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test", "mean", "std")
_CACHE_FORMAT = 1


def cache_dir() -> Path | None:
    """Folder of tuner's caches, or ``None`` when ``TUNER_CACHE_DIR`` is set but empty."""
    explicit = os.environ.get("TUNER_CACHE_DIR")
    if explicit is not None:
        return Path(explicit).expanduser() if explicit else None
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "tuner"


def cache_file(name: str, **args: Any) -> Path | None:
    folder = cache_dir()
    if folder is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        sklearn_version = version("scikit-learn")
    except PackageNotFoundError:
        return None
    from tuner import __version__

    # tuner's version too: a release may prepare the splits differently
    key = json.dumps({"name": name, **args, "scikit-learn": sklearn_version,
                      "tuner": __version__, "format": _CACHE_FORMAT}, sort_keys=True)
    return folder / "splits" / f"{name}-{hashlib.sha256(key.encode()).hexdigest()[:20]}.npz"


def read_splits(path: Path) -> Splits | None:
    """The splits stored at ``path``; ``None`` if missing or unreadable (then rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in SPLIT_ARRAYS}
            meta = json.loads(str(archive["meta"]))
        return Splits(name=meta["name"], class_names=meta["class_names"],
                      feature_names=meta["feature_names"], **arrays)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def write_splits(path: Path, splits: Splits) -> None:
    """Store ``splits`` at ``path`` atomically; a cache that cannot be written is skipped."""
    meta = json.dumps({"name": splits.name, "class_names": splits.class_names,
                       "feature_names": splits.feature_names})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
            np.savez(fh, meta=np.array(meta), **{key: getattr(splits, key) for key in SPLIT_ARRAYS})
        os.replace(fh.name, path)
    except OSError:
        try:
            os.unlink(fh.name)
        except (OSError, UnboundLocalError):
            pass
