"""The two kinds of artifact that flow through a pipeline: a torch model in memory and an
ONNX model folder on disk. Neither module imports torch or onnx at import time."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

TORCH = "torch"
ONNX = "onnx"


@dataclass
class TorchModel:
    """A Hugging Face sequence-classification model and its tokenizer, in memory.

    ``info`` carries facts later steps need (e.g. ``{"sparsity": ...}``, ``{"source": ...}``).
    """

    kind: ClassVar[str] = TORCH
    model: Any
    tokenizer: Any
    info: dict = field(default_factory=dict)

    def save(self, folder: str | Path) -> Path:
        """Save model (safetensors) and tokenizer to ``folder`` atomically (temp dir + rename)."""
        folder = Path(folder)
        with atomic_dir(folder) as tmp:
            self.model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
        return folder


@dataclass
class OnnxModel:
    """A Hugging Face ONNX folder: ``model.onnx`` beside config.json and tokenizer files."""

    kind: ClassVar[str] = ONNX
    folder: Path
    info: dict = field(default_factory=dict)
    filename: str = "model.onnx"

    @property
    def path(self) -> Path:
        return Path(self.folder) / self.filename

    def size_bytes(self) -> int:
        """Size on disk of the ONNX file plus any external-data files beside it."""
        total = self.path.stat().st_size
        for extra in Path(self.folder).glob(self.filename + "*.data"):
            total += extra.stat().st_size
        return total


class atomic_dir:
    """Context manager: yields a temporary folder next to ``target``; on success renames it to
    ``target`` (replacing an older one), on error removes it. A crash never leaves a half folder."""

    def __init__(self, target: str | Path):
        self.target = Path(target)

    def __enter__(self) -> Path:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        os.chmod(self.tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700)
        if self.target.exists():
            old = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, old)
            os.replace(self.tmp, self.target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp, self.target)
        return False


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)  # name the file in "disk full" messages
        raise
    return path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
