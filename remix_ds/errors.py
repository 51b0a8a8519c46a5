"""The one base class for errors caused by the user's input (config, data, shards, checkpoints).

A `RemixError`'s message names the file and line, or the config key, and the cause; the CLI
prints it as one line (`remix-ds: error: ...`) and exits 2. The traceback is shown only with
`--debug` or `REMIX_DS_DEBUG=1`. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class RemixError(ValueError):
    """Bad input: the message names where (file:line or key) and why, in one line."""


def debug_enabled() -> bool:
    return os.environ.get("REMIX_DS_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


class CheckpointError(RemixError):
    """A checkpoint folder is incomplete, damaged or does not fit this run; names the file and the check."""


class NonFiniteError(RemixError):
    """Training produced a non-finite loss or gradient norm; names the step, the value and the lr in force."""
