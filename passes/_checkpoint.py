"""Training checkpoints: everything :func:`passes._train.train` needs to continue a killed run
exactly where it stopped, written atomically and loaded without unpickling code.

A checkpoint is a folder ``<step dir>/checkpoints/train-<i>/`` (``i`` counts the ``train`` calls
of one pass, so a pass that trains in stages gets one per stage) holding ``state.pt`` and a
human-readable ``meta.json``. It is written to a temporary folder and renamed over the previous
one (:class:`compressor.artifact.atomic_dir`), so a crash mid-write leaves the last good
checkpoint. ``state.pt`` is read with ``torch.load(weights_only=True)``: only tensors and plain
containers, never pickled objects.

``state.pt`` holds: the model's state_dict (mask buffers and movement scores included: they are
parametrization buffers/parameters), optimizer and LR scheduler state, the RNG states (python,
numpy, torch, CUDA), the data position (epoch, batches done in it, the shuffling generator's
state at the start of that epoch), the loop's running values (loss sum, epoch records, the kept
best state) and the method's own state (``method_state``, see :class:`Resumable`). A finished
call stores the returned model, RNG, method state and result only.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from pathlib import Path

import torch

from compressor.context import CHECKPOINTS

log = logging.getLogger(__name__)

FOLDER = CHECKPOINTS  # <step dir>/checkpoints (named by compressor.context)
STATE_FILE = "state.pt"
META_FILE = "meta.json"
FORMAT = 1


def call_dir(ctx) -> Path | None:
    """The checkpoint folder of the next ``train`` call in the current pipeline step
    (``<step dir>/checkpoints/train-<i>``, from the step's training hook), or None outside a step."""
    hook = getattr(ctx, "training", None)
    return hook.next_checkpoint_dir() if hook is not None else None


# -- method state ----------------------------------------------------------------------------
class Resumable:
    """A method's training-time state, declared once: the ``method_state`` argument of
    :func:`passes._train.train` (saved in checkpoints, restored on resume, brought back from the
    worker processes). A hooks object lists in ``resumable`` the attributes a checkpoint holds;
    each is saved under its name:

    - a dict or list: a copy, restored in place (whoever holds it sees the restored values);
    - a ``torch.Generator``: its state;
    - an object with ``state_dict()``/``load_state_dict()`` (e.g. another Resumable): its own;
    - anything else (a number, string, tensor, None): a copy, set back on the attribute.

    Values must be tensors, numbers, strings, None and lists/tuples/dicts of those (what
    ``torch.load(weights_only=True)`` reads). A class whose state has no fixed names overrides
    :meth:`state_dict`/:meth:`load_state_dict`.
    """

    resumable: tuple[str, ...] = ()

    def state_dict(self) -> dict:
        return {name: _save_item(getattr(self, name)) for name in self.resumable}

    def load_state_dict(self, state: dict) -> None:
        for name in self.resumable:
            if name in state:
                _load_attr(self, name, state[name])


def _save_item(item):
    if isinstance(item, torch.Generator):
        return item.get_state()
    if isinstance(item, (dict, list)):
        return copy.deepcopy(item)
    if hasattr(item, "state_dict"):
        return item.state_dict()
    return copy.deepcopy(item)


def _load_attr(obj, name: str, value) -> None:
    """Restore attribute ``name`` of ``obj`` from what :func:`_save_item` saved of it."""
    item, value = getattr(obj, name), copy.deepcopy(value)
    if isinstance(item, torch.Generator):
        item.set_state(value)
    elif isinstance(item, dict) and isinstance(value, dict):
        item.clear()
        item.update(value)
    elif isinstance(item, list) and isinstance(value, list):
        item[:] = value
    elif hasattr(item, "load_state_dict"):
        item.load_state_dict(value)
    else:
        setattr(obj, name, value)


# -- RNG ---------------------------------------------------------------------------------------
def rng_state() -> dict:
    """The python, numpy, torch (and initialised CUDA) RNG states, in weights-only types."""
    import numpy as np
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (name, torch.from_numpy(keys.astype("int64")),
                                                     int(pos), int(has_gauss), float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    import numpy as np
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# -- files -------------------------------------------------------------------------------------
_PLAIN = (type(None), bool, int, float, str, torch.Tensor, torch.Size, torch.dtype)


def check_weights_only(obj, where: str = "state") -> None:
    """TypeError naming the path of the first value ``torch.load(weights_only=True)`` rejects."""
    if isinstance(obj, _PLAIN):
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"checkpoint key {where}[{k!r}] is a {type(k).__name__}: use str or int")
            check_weights_only(v, f"{where}[{k!r}]")
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_weights_only(v, f"{where}[{i}]")
        return
    raise TypeError(f"checkpoint value {where} is a {type(obj).__name__}: only tensors, numbers, "
                    "strings, None and lists/tuples/dicts of them can be saved")


def save(folder: Path, state: dict, meta: dict) -> None:
    """Write ``state`` (see the module docstring) and ``meta`` into ``folder`` atomically."""
    from compressor.artifact import atomic_dir
    check_weights_only(state)
    with atomic_dir(folder) as tmp:
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps({"format": FORMAT, **meta}, indent=1, default=str))
    log.debug("checkpoint %s: %s", folder, meta.get("position"))


def read_meta(folder: Path) -> dict | None:
    """``meta.json`` of the checkpoint in ``folder``, or None when there is none (or unreadable)."""
    try:
        return json.loads((Path(folder) / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def load(folder: Path | None, fingerprint: dict, *, finished_only: bool = False,
         map_location="cpu") -> dict | None:
    """The checkpoint state in ``folder`` if it exists, was written by this format for the same
    training setup (``fingerprint``) and, with ``finished_only``, marks a finished call; else None
    (a mismatch is logged and the checkpoint ignored)."""
    if folder is None:
        return None
    meta = read_meta(folder)
    if meta is None or not (Path(folder) / STATE_FILE).is_file():
        return None
    if meta.get("format") != FORMAT or meta.get("fingerprint") != _jsonable(fingerprint):
        log.warning("ignoring checkpoint %s: written for another training setup (%s, now %s)",
                    folder, meta.get("fingerprint"), _jsonable(fingerprint))
        return None
    if finished_only and not meta.get("finished"):
        return None
    try:
        return torch.load(Path(folder) / STATE_FILE, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated by hand, wrong torch version, ...
        log.warning("ignoring unreadable checkpoint %s: %s", folder, exc)
        return None


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))
