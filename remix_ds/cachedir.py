"""Build-once cache folders (the tiny model, the built-in corpus, test fixtures).

Several ranks or test processes may ask for the same folder at once; each builds into its own
temp folder beside the final one and the first atomic rename wins. A crash mid-build leaves only a
`.tmp-*` folder, never a final folder that looks complete.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable


def cache_root() -> Path:
    """Root of every build-once cache: $REMIX_DS_CACHE, default ~/.cache/remix_ds."""
    return Path(os.environ.get("REMIX_DS_CACHE", Path.home() / ".cache" / "remix_ds"))


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` filtered by the process umask: what ``open()`` would have given the file.

    ``tempfile.mkstemp``/``mkdtemp`` create 0600/0700 entries; caches and shards are meant to be
    shared by the users of a cluster, so temp entries are chmod-ed to the ordinary mode.
    """
    current = os.umask(0)
    os.umask(current)
    return mode & ~current


def build_once(final: Path, build: Callable[[Path], None], marker: str) -> Path:
    """Return ``final``, first running ``build(tmp_dir)`` unless ``final/marker`` exists."""
    final = Path(final)
    if (final / marker).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    os.chmod(tmp, umask_mode(0o777))
    try:
        build(tmp)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race; its build is identical
            if not (final / marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
