"""Recipes: the settings of a run as a YAML file (``compress run --recipe recipe.yaml``).

A recipe holds the same values as the ``compress run`` flags, grouped::

    model: minilm                      # MODEL: alias, local folder or hub id
    seed: 0
    data: {task: rotten-tomatoes, max_train: 2000, max_eval: 500, max_length: 64}
                                       # or train: FILE and eval: FILE instead of task
                                       # task_type: classification | regression | embeddings
                                       # | token-classification
                                       # | question-answering (doc_stride: N)
                                       # (unset: detected); embeddings: pooling, normalize, contrastive,
                                       # sts: FILE, retrieval: DIR, unlabeled: FILE,
                                       # static_baseline: DIR (a model2vec folder, a baseline row)
    method: {name: magnitude, sparsity: 0.9, granularity: weight, options: {schedule: cubic}}
    pipeline: null                     # or a spec ("finetune,magnitude{sparsity=0.9},export")
                                       # or a list of steps (- export, - magnitude: {sparsity: 0.9})
    training: {epochs: 1, num_processes: 1, checkpoint_every: 200, allow_collapse: false}
                                       # allow_collapse: a collapse to the majority class is no error
    targets: [cpu]
    profile: {batch_sizes: [1, 8], seq_lens: [128], runs: 30}
    output: out/demo

``method: cap`` is short for ``method: {name: cap}``. Every key is optional (missing keys take
the flag defaults); an unknown key is rejected by name with the allowed ones. A flag given on the
command line overrides the recipe. Relative paths are taken from the current folder, as flags.
Every run writes its complete, resolved recipe to ``<output>/recipe.yaml`` (local paths made
absolute); ``compress run --recipe <output>/recipe.yaml -o other/`` repeats the run, and
``compress run --resume -o <output>`` continues it. ``--trust-remote-code`` is never read from a
recipe: running a model's own code needs the flag each time.

The file is read with ``yaml.safe_load`` (no Python objects).
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from pathlib import Path

from compressor.config import OPTION_KEY, RECIPE_NAME, SPEC_CHARS, RunConfig
from compressor.errors import ConfigError

# recipe group -> {key: RunConfig field}; RunConfig fields not listed here (and not in
# NOT_IN_RECIPE) are top-level keys under their own name (model, seed, targets, gates, ...).
GROUPS: dict[str, dict[str, str]] = {
    "data": {"task": "task", "train": "train_file", "eval": "eval_file", "max_train": "max_train",
             "max_eval": "max_eval", "max_length": "max_length", "dev_size": "dev_size",
             "columns": "columns", "task_type": "task_type", "doc_stride": "doc_stride", "pooling": "pooling", "normalize": "normalize", "contrastive": "contrastive",
             "sts": "sts_file", "retrieval": "retrieval_dir", "unlabeled": "unlabeled_file",
             "static_baseline": "static_baseline"},
    "method": {"name": "method", "sparsity": "sparsity", "granularity": "granularity",
               "options": "method_options", "recover": "recover", "recover_steps": "recover_steps",
               "speedup": "speedup",
               "max_drop": "max_drop", "hidden_width": "hidden_width"},
    "training": {"epochs": "epochs", "num_processes": "num_processes",
                 "checkpoint_every": "checkpoint_every", "allow_collapse": "allow_collapse"},
    "export": {"sparse_init": "sparse_init", "quantize": "quantize", "vocab_prune": "vocab_prune",
               "vocab_texts": "vocab_texts", "max_positions": "max_positions", "embed_int8": "embed_int8"},
    "profile": {"batch_sizes": "batch_sizes", "seq_lens": "seq_lens", "runs": "runs", "min_seconds": "min_seconds",
                "real_shapes": "real_shapes", "allow_fallback": "allow_fallback"},
    "mlflow": {"uri": "mlflow_uri", "experiment": "mlflow_experiment"},
}
NOT_IN_RECIPE = ("progress", "command", "extra", "resume", "trust_remote_code")
ORDER = ("model", "teacher", "seed", "data", "method", "pipeline", "training", "export", "targets",
         "profile", "gates", "mlflow", "output")
# Settings that may change between a run and its --resume (how it runs, not what it computes;
# allow_collapse: a run stopped by a collapse continues with --resume --allow-collapse).
EXECUTION = ("num_processes", "checkpoint_every", "output", "progress", "command", "resume", "allow_collapse")


def _layout() -> tuple[dict[str, dict[str, str]], dict[str, str], dict[str, object]]:
    """(groups, top-level key -> field, field -> type) for the RunConfig of this version."""
    cls = RunConfig
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls) if f.name not in NOT_IN_RECIPE]
    groups = {g: {k: f for k, f in keys.items() if f in fields} for g, keys in GROUPS.items()}
    grouped = {f for keys in groups.values() for f in keys.values()}
    top = {f: f for f in fields if f not in grouped}
    return {g: k for g, k in groups.items() if k}, top, {f: hints[f] for f in fields}


# -- reading -----------------------------------------------------------------------------------
def load_recipe(path) -> dict:
    """RunConfig values (field -> value) of the recipe file ``path``; ConfigError naming the file
    and the key for anything that is not allowed."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"recipe '{path}' not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"recipe '{path}' cannot be read: {exc}") from None
    return parse_recipe(text, str(path))


def parse_recipe(text: str, source: str = "<recipe>") -> dict:
    """RunConfig values of the recipe ``text`` (YAML); see the module docstring."""
    import yaml
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"recipe {source} is not valid YAML{where}: {problem}") from None
    except (ValueError, TypeError, RecursionError) as exc:  # e.g. a timestamp out of range
        raise ConfigError(f"recipe {source} cannot be read: {exc}") from None
    return recipe_values(data, source)


def recipe_values(data, source: str = "<recipe>") -> dict:
    """RunConfig values of an already parsed recipe mapping."""
    groups, top, types_ = _layout()
    if data is None:
        raise ConfigError(f"recipe {source} is empty: expected keys such as model, data, method")
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {source} must be a mapping of keys (model, data, method, ...), "
                          f"not a {type(data).__name__}")
    if isinstance(data.get("method"), str):
        data = {**data, "method": {"name": data["method"]}}
    allowed = sorted(set(top) | set(groups))
    out = {}
    for key, value in data.items():
        if key in groups:
            if value is None:
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"recipe {source}: '{key}' must be a mapping of "
                                  f"{', '.join(groups[key])}, not {_show(value)}")
            for sub, v in value.items():
                if sub not in groups[key]:
                    raise ConfigError(f"recipe {source}: unknown key {_text_key(f'{key}.{sub}')}: allowed "
                                      f"{', '.join(sorted(groups[key]))}")
                name = groups[key][sub]
                out[name] = _coerce(f"{key}.{sub}", v, types_[name], source)
        elif key in top:
            out[key] = _coerce(key, value, types_[key], source)
        else:
            hint = " (pass --trust-remote-code on the command line)" if key == "trust_remote_code" else ""
            raise ConfigError(f"recipe {source}: unknown key {_text_key(key)}: allowed "
                              f"{', '.join(allowed)}{hint}")
    return out


def _text_key(key) -> str:
    """A key as quoted, one-line text (``'name'``)."""
    return repr(str(key)[:80])


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coerce(key: str, value, tp, source: str):
    """``value`` converted to the field type ``tp`` (ConfigError naming key and value)."""
    def bad(what: str):
        return ConfigError(f"recipe {source}: {key}={_show(value)} must be {what}")

    args = typing.get_args(tp)
    optional = type(None) in args or tp is type(None)
    if value is None:
        if optional:
            return None
        raise bad(f"{_type_text(tp)} (not empty)")
    if key == "pipeline":
        return _pipeline_text(value, bad)
    union = typing.get_origin(tp) in (typing.Union, types.UnionType)
    if union and str in args and isinstance(value, str):  # e.g. hidden_width: 320 or auto
        return value
    base = next((a for a in args if a is not type(None)), tp) if union else tp
    origin = typing.get_origin(base)
    if base is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if origin is tuple:
        item = typing.get_args(base)[0]
        items = value if isinstance(value, list) else (
            [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) and item is int
            else [value])
        try:
            if item is int:
                return tuple(int(v) if isinstance(v, str) else _int(v) for v in items)
            return tuple(_str(v) for v in items)
        except (TypeError, ValueError):
            raise bad(f"a list of {'integers' if item is int else 'strings'}") from None
    if base is dict or origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad("a mapping of names to values")
        if key.endswith("options"):
            return {k: _option_text(key, k, v, bad) for k, v in value.items()}
        for k, v in value.items():
            if not isinstance(v, (str, int, float, bool)) or v is None:
                raise bad("a mapping of names to numbers, strings or true/false")
        return dict(value)
    raise bad(_type_text(tp))  # pragma: no cover - a RunConfig field of a new kind


def _int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(v)
    return v


def _str(v) -> str:
    if not isinstance(v, str):
        raise TypeError(v)
    return v


def _type_text(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def _option_text(key: str, name: str, value, bad) -> str:
    """A pass option value as spec text (``true``/``false`` for booleans)."""
    if not OPTION_KEY.fullmatch(name):
        raise bad("a mapping of option names (letters, digits, _ and -) to values")
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, (int, float, str)):
        raise bad("a mapping of option names to numbers, strings or true/false")
    text = str(value)
    if not text.strip() or SPEC_CHARS & set(text):
        raise bad("option values without , { } = or line breaks")
    return text


def _pipeline_text(value, bad) -> str:
    """A pipeline as a spec string: a string as it is, or a list of steps (``name``,
    ``"name{k=v}"`` or ``{name: {k: v}}``) joined with commas."""
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or not value:
        raise bad("a spec string or a list of steps")
    parts = []
    for item in value:
        if isinstance(item, str) and item.strip():
            parts.append(item.strip())
        elif isinstance(item, dict) and len(item) == 1:
            (name, opts), = item.items()
            if not isinstance(name, str) or not OPTION_KEY.fullmatch(name):
                raise bad("a list of steps: name or {name: {option: value}}")
            if opts is None:
                parts.append(name)
                continue
            if not isinstance(opts, dict) or not all(isinstance(k, str) for k in opts):
                raise bad("a list of steps: name or {name: {option: value}}")
            body = ",".join(f"{k}={_option_text('pipeline', k, v, bad)}" for k, v in opts.items())
            parts.append(f"{name}{{{body}}}")
        else:
            raise bad("a list of steps: name or {name: {option: value}}")
    return ",".join(parts)


# -- writing -----------------------------------------------------------------------------------
def _local(path: str | None) -> str | None:
    """An existing local path made absolute; anything else (alias, hub id, None) as it is."""
    if not path:
        return path
    p = Path(path).expanduser()
    return str(p.resolve()) if p.exists() else path


def recipe_dict(cfg) -> dict:
    """The complete recipe of ``cfg`` (every key, local paths absolute), in :data:`ORDER`."""
    groups, top, _ = _layout()
    values = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    values["model"] = _local(values.get("model"))
    values["teacher"] = _local(values.get("teacher"))
    for key in ("train_file", "eval_file", "unlabeled_file", "static_baseline"):
        if key in values:
            values[key] = _local(values[key])
    if values.get("train_file"):
        values["task"] = None  # files replace the task
    if "output" in values:
        values["output"] = str(Path(values["output"]).expanduser().resolve())

    def plain(v):
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    out = {g: {k: plain(values[f]) for k, f in keys.items()} for g, keys in groups.items()}
    out.update({k: plain(values[f]) for k, f in top.items()})
    ordered = {k: out[k] for k in ORDER if k in out}
    ordered.update({k: v for k, v in out.items() if k not in ordered})
    return ordered


def dump_recipe(cfg) -> str:
    """``cfg`` as recipe YAML text with a header saying how to use it."""
    import yaml
    head = ["# compressor recipe: the complete settings of this run.",
            "# Repeat it:  compress run --recipe recipe.yaml -o OTHER_FOLDER",
            "# Continue it after an interruption:  compress run --resume -o THIS_FOLDER"]
    if getattr(cfg, "trust_remote_code", False):
        head.append("# This run used --trust-remote-code (never read from a recipe: pass it again).")
    return "\n".join(head) + "\n" + yaml.safe_dump(recipe_dict(cfg), sort_keys=False,
                                                   default_flow_style=False, allow_unicode=True)


def write_recipe(folder, cfg) -> Path:
    """Write ``<folder>/recipe.yaml`` for ``cfg`` atomically; return its path."""
    from compressor.artifact import atomic_write_text
    return atomic_write_text(Path(folder) / RECIPE_NAME, dump_recipe(cfg))


def check_resume(folder, cfg) -> None:
    """ConfigError unless ``folder`` holds the recipe of an earlier run with the same settings as
    ``cfg`` (execution settings such as the number of processes may differ)."""
    path = Path(folder) / RECIPE_NAME
    if not path.is_file():
        raise ConfigError(f"--resume: '{folder}' has no {RECIPE_NAME} of an earlier run: "
                          "run without --resume to start one")
    before = load_recipe(path)
    now = recipe_values(json.loads(json.dumps(recipe_dict(cfg))), "(this run)")
    # a setting the earlier recipe lacks (added to the tool since) ran at its default
    before = {**recipe_values(json.loads(json.dumps(recipe_dict(type(cfg)()))), "(defaults)"), **before}
    changed = [f"{k} {_show(before.get(k))} -> {_show(now.get(k))}" for k in sorted(set(before) | set(now))
               if k not in EXECUTION and before.get(k) != now.get(k)]
    if changed:
        raise ConfigError(f"--resume: settings differ from the run in '{folder}' ({'; '.join(changed)}): "
                          "resume with the same settings, or use another --output")


__all__ = ["RECIPE_NAME", "load_recipe", "parse_recipe", "recipe_values", "recipe_dict", "dump_recipe",
           "write_recipe", "check_resume"]
