"""Inputs and measurements shared by the targets: model size on disk, seeded token inputs and
their feeds, the model's input names and position limit, host resident memory (RSS) and device
memory read from ``nvidia-smi``.

Nothing heavy is imported at module level (numpy and onnx load inside the functions).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from pathlib import Path

from compressor.errors import ArtifactError, check_range

log = logging.getLogger(__name__)

_DTYPES = {"tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(float)": "float32",
           "tensor(float16)": "float16", "tensor(bool)": "bool"}
DEFAULT_VOCAB = 100  # token ids below 100 exist in every BERT-family vocabulary


def model_size_bytes(path: str | Path) -> int:
    """Size of an ONNX file plus its external-data files beside it (``model.onnx.data``,
    ``model.onnx_data``: anything named ``<file name>...data``)."""
    path = Path(path)
    total = path.stat().st_size
    for extra in path.parent.glob(path.name + "?*data"):
        if extra.is_file():
            total += extra.stat().st_size
    return total


def _config_values(paths, key: str) -> list[int]:
    found = []
    for path in paths:
        cfg = Path(path).parent / "config.json"
        try:
            found.append(int(json.loads(cfg.read_text())[key]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def resolve_vocab_size(paths, vocab_size: int | None = None) -> int:
    """``vocab_size`` if given, else the smallest ``vocab_size`` in the config.json files beside
    ``paths`` (so the same ids are valid for every model), else :data:`DEFAULT_VOCAB`."""
    if vocab_size is not None:
        check_range("vocab_size", vocab_size, 1, 10**9)
        return int(vocab_size)
    found = _config_values(paths, "vocab_size")
    return min(found) if found else DEFAULT_VOCAB


def resolve_max_positions(paths) -> int | None:
    """The longest sequence, in tokens, every model beside ``paths`` accepts (the smallest
    :func:`compressor.registry.max_tokens` of their config.json files), or None when no config says."""
    from compressor.registry import max_tokens
    found = []
    for path in paths:
        try:
            limit = max_tokens(json.loads((Path(path).parent / "config.json").read_text()))
        except (OSError, ValueError):
            continue
        if limit is not None:
            found.append(limit)
    return min(found) if found else None


def make_token_arrays(batch: int, seq_len: int, vocab_size: int, seed: int = 0) -> dict:
    """Seeded ``input_ids`` in ``[0, vocab_size)``, ``attention_mask`` ones, ``token_type_ids``
    zeros and ``position_ids`` 0..seq_len-1, all int64 of shape (batch, seq_len)."""
    import numpy as np
    rng = np.random.default_rng(seed)
    return {"input_ids": rng.integers(0, vocab_size, size=(batch, seq_len), dtype=np.int64),
            "attention_mask": np.ones((batch, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((batch, seq_len), dtype=np.int64),
            "position_ids": np.tile(np.arange(seq_len, dtype=np.int64), (batch, 1))}


def make_feeds(sess, arrays: dict) -> dict:
    """The feed dict for ``sess``: each input by name from ``arrays``, cast to its ONNX type.
    ``token_type_ids`` and ``position_ids`` are derived when ``arrays`` lacks them."""
    import numpy as np
    feeds = {}
    for inp in sess.get_inputs():
        arr = arrays.get(inp.name)
        if arr is None and "input_ids" in arrays and inp.name in ("token_type_ids", "position_ids"):
            ids = arrays["input_ids"]
            arr = (np.zeros_like(ids) if inp.name == "token_type_ids"
                   else np.broadcast_to(np.arange(ids.shape[1], dtype=np.int64), ids.shape).copy())
        if arr is None:
            raise ArtifactError(f"model input '{inp.name}' cannot be generated: known inputs are "
                                f"{', '.join(arrays)}")
        feeds[inp.name] = arr.astype(_DTYPES.get(inp.type, "int64"), copy=False)
    return feeds


def graph_input_names(path: str | Path) -> list[str]:
    """Names of the real graph inputs (initializers excluded) of an ONNX file, read without its
    external data."""
    import onnx
    proto = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in proto.graph.initializer} | {
        s.values.name for s in proto.graph.sparse_initializer}
    return [i.name for i in proto.graph.input if i.name not in inits]


def read_rss_mb() -> dict:
    """This process's resident memory in MB: ``{"peak": VmHWM, "current": VmRSS}``.

    Read from ``/proc/self/status`` on Linux (process-wide: every session and tensor in the
    process counts); elsewhere ``resource.getrusage`` gives the peak only. Missing -> None.
    """
    try:
        text = Path("/proc/self/status").read_text()
        kb = {k: int(v) for k, v in re.findall(r"^(VmHWM|VmRSS):\s+(\d+)\s*kB", text, re.M)}
        return {"peak": kb["VmHWM"] / 1024, "current": kb["VmRSS"] / 1024}
    except (OSError, KeyError):
        pass
    try:
        import resource
        import sys
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux, bytes on macOS
        return {"peak": peak / (1024 * 1024 if sys.platform == "darwin" else 1024), "current": None}
    except (ImportError, OSError):
        return {"peak": None, "current": None}


def reset_peak_rss() -> bool:
    """Reset the process's RSS high-water mark (Linux >= 4.0: ``/proc/self/clear_refs`` = 5)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _smi(args: list[str]) -> list[str] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        proc = subprocess.run([exe, *args, "--format=csv,noheader,nounits"], capture_output=True,
                              text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return [ln.strip() for ln in proc.stdout.splitlines() if ln.strip()]


def _smi_index(device_id: int) -> str:
    """The nvidia-smi index of CUDA device ``device_id`` (CUDA_VISIBLE_DEVICES renumbers)."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if device_id < len(visible) and visible[device_id].isdigit():
        return visible[device_id]
    return str(device_id)


def gpu_memory_mb(device_id: int = 0) -> tuple[float | None, str | None]:
    """GPU memory in MB and where the number comes from: this process's use as ``nvidia-smi
    --query-compute-apps`` lists it (``"nvidia-smi: this process"``), else the whole device's
    used memory (``"nvidia-smi: whole device"``, other processes included), else ``(None, None)``
    when nvidia-smi is missing or fails. ORT's arena keeps what it allocated, so after the timed
    runs this is close to the peak."""
    index = _smi_index(device_id)
    rows = _smi(["--query-compute-apps=pid,used_memory", "-i", index])
    if rows:
        mine = [r.split(",") for r in rows if r.split(",")[0].strip() == str(os.getpid())]
        try:
            if mine:
                return float(sum(float(r[1]) for r in mine)), "nvidia-smi: this process"
        except (ValueError, IndexError):
            pass
    rows = _smi(["--query-gpu=memory.used", "-i", index])
    try:
        return (float(rows[0]), "nvidia-smi: whole device") if rows else (None, None)
    except ValueError:
        return None, None
