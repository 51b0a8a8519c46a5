"""Build-once cache folders (the tiny model, the built-in corpus, test fixtures).

Several ranks, jobs or grids may ask for the same folder at once: the first takes a file lock
(`.<name>.lock` beside the folder) and builds into its own temp folder, renamed atomically when
complete; the others wait for the lock and find the folder built (so a cache is built once). A
crash mid-build leaves only a `.tmp-*` folder, never a final folder that looks complete, and
releases the lock. Each build says so on stderr (`[cache] built ...`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Callable, Iterator

from filelock import FileLock


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
    with FileLock(final.parent / f".{final.name}.lock"):
        if (final / marker).is_file():  # built by the process we waited for
            return final
        start = time.perf_counter()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        os.chmod(tmp, umask_mode(0o777))
        try:
            build(tmp)
            try:
                os.rename(tmp, final)
            except OSError:  # a process without the lock (an older version) won the race; its build is identical
                if not (final / marker).is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"[cache] built {final} in {time.perf_counter() - start:.1f} s (pid {os.getpid()})", file=sys.stderr)
    return final


@contextlib.contextmanager
def open_atomic(path: Path, mode: str = "w") -> Iterator[IO]:
    """``open(path, mode)`` that publishes the file only when the block completes: it writes a unique
    temp file beside `path` (``.tmp-NAME-XXXX``), renamed over `path` at the end of the block, and
    removed if the block raises. Readers never see a partial file and concurrent writers never share
    a temp file (the last rename wins). `mode` is ``"w"`` (UTF-8 text, newlines as written) or ``"wb"``."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_atomic: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}-", dir=path.parent)
    try:
        with (os.fdopen(fd, "w", encoding="utf-8", newline="") if mode == "w" else os.fdopen(fd, "wb")) as f:
            yield f
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` atomically (`open_atomic`)."""
    with open_atomic(path) as f:
        f.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (`open_atomic`)."""
    with open_atomic(path, "wb") as f:
        f.write(data)
