"""The run's output folder before anything is written to it: writable, resumable, and cleaned of
what interrupted writes and earlier runs' training checkpoints left."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from compressor.context import CHECKPOINTS
from compressor.errors import ConfigError


def check_output(path: str | Path) -> Path:
    """Check the output folder can be written without writing anything into it yet."""
    out = Path(path)
    probe = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output '{out}' exists and is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder '{out}' is not writable (checked '{probe}')")
    return out


def prepare_workdir(folder: str | Path, cfg) -> None:
    """Before a run writes to ``folder``: with ``cfg.resume`` check that it holds an earlier run
    with the same settings (ConfigError otherwise) and remove what interrupted writes left; for a
    new run remove training checkpoints of earlier runs (they must never be resumed into it)."""
    folder = Path(folder)
    if getattr(cfg, "resume", False):
        from compressor.recipe import check_resume
        check_resume(folder, cfg)
        clean_temp(folder)
    elif folder.is_dir():
        for old in folder.glob(f"*/{CHECKPOINTS}"):
            shutil.rmtree(old, ignore_errors=True)


def clean_temp(folder: str | Path) -> int:
    """Remove what interrupted atomic writes left (``.NAME.tmp-*``, ``.NAME.old-*``) under
    ``folder`` (completing a folder replacement killed between its renames); return how many
    entries went."""
    removed = 0
    for old in list(Path(folder).rglob(".*.old-*")):
        # atomic_dir was killed between its two renames: the target went to .NAME.old-PID and the
        # finished .NAME.tmp-* was not yet renamed to NAME. That temporary folder is complete.
        name = old.name[1:old.name.rindex(".old-")]
        target = old.with_name(name)
        done = sorted(old.parent.glob(f".{name}.tmp-*"))
        if not target.exists() and len(done) == 1 and done[0].is_dir():
            done[0].replace(target)
    for path in sorted(Path(folder).rglob(".*"), key=lambda p: -len(p.parts)):
        if ".tmp-" in path.name or ".old-" in path.name:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


__all__ = ["check_output", "prepare_workdir", "clean_temp"]
