"""Output folders of the reports, checked for writability before any work starts."""

from __future__ import annotations

import os
from pathlib import Path


class OutputDirError(ValueError):
    """An output folder that cannot be created or written."""


def check_out_dir(out: str | os.PathLike, option: str = "--out") -> Path:
    """``out`` as a Path if it is (or can be created as) a writable folder; nothing is created here.

    Checks the nearest existing ancestor, so ``--out`` under a file or in a read-only folder fails with
    one line before a report is computed, and nothing already written is touched. ``option`` names the
    command-line option in that line ("" when the caller's parser adds it, as argparse does).
    """
    path = Path(out)
    named = f"{option} {path}" if option else str(path)
    if path.exists() and not path.is_dir():
        raise OutputDirError(f"{named} is a file, not a folder; choose a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputDirError(f"{named} lies under the file {probe}; choose a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputDirError(f"{named}: {probe} is not writable; choose a writable folder")
    return path


def write_error(out: str | os.PathLike, err: OSError) -> OutputDirError:
    """One line for a write that failed after the checks (disk full, permissions changed meanwhile)."""
    return OutputDirError(f"cannot write the report into {out}: {err.strerror or err}; files already there "
                          "are unchanged or complete (each file is replaced atomically)")
