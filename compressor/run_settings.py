"""The settings of `compress run` that come from flags rather than from a recipe's values: the
extra flags (``--recipe``, ``--resume``, ``--num-processes``, ...), merging the flags with a recipe
(:func:`apply_cli`) and the checks of those settings (:func:`check_settings`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from compressor.errors import ConfigError
from compressor.recipe import _OPTION_KEY, _SPEC_CHARS, RECIPE_NAME, load_recipe

# `compress run` parameters whose RunConfig field has another name.
PARAM_FIELDS = {"pipeline_spec": "pipeline", "no_sparse_init": "sparse_init",
                "min_retention": "gates", "min_speedup": "gates", "max_latency_ms": "gates",
                "max_size_mb": "gates", "method_option": "method_options"}


METHOD_FLAGS = {"sparsity": "--sparsity", "granularity": "--granularity", "max_length": "--max-length",
                "epochs": "--epochs"}


def check_settings(cfg) -> None:
    """ConfigError for bad resume, process, checkpoint and method-option settings of ``cfg``
    (called by ``RunConfig.validate``)."""
    import os

    from compressor.errors import check_range
    for name, lo, hi in (("checkpoint_every", 0, 10**9), ("num_processes", 1, 1024)):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} is not an integer: allowed [{lo}, {hi}]")
        check_range(name, value, lo, hi)
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip().isdigit() and int(world) > 1:
        raise ConfigError(f"compress run is one rank of {world} processes (WORLD_SIZE={world}, from "
                          f"torchrun or accelerate launch): run it as one process with "
                          f"--num-processes {world} instead")
    opts = cfg.method_options or {}
    if opts and cfg.pipeline:
        raise ConfigError(f"method options {', '.join(opts)} apply to --method, not to --pipeline: "
                          "put them into the spec, e.g. magnitude{schedule=oneshot}")
    for key, value in opts.items():
        if key in METHOD_FLAGS:
            raise ConfigError(f"method option '{key}' is set with {METHOD_FLAGS[key]} (recipe: "
                              f"method.{key} or training.epochs), not as an option")
        if not isinstance(key, str) or not _OPTION_KEY.fullmatch(key):
            raise ConfigError(f"method option name {key!r} is not allowed: letters, digits, _ and -")
        if not str(value).strip() or _SPEC_CHARS & set(str(value)):
            raise ConfigError(f"method option {key}={str(value)!r} is not allowed: a value without "
                              ", { } = or line breaks")


# -- the command line --------------------------------------------------------------------------
def cli_options(f):
    """The `compress run` flags for recipes, resuming, processes and remote code."""
    import click
    opts = [
        click.option("--recipe", type=click.Path(dir_okay=False),
                     help="Read the settings from this YAML recipe; flags given here override it."),
        click.option("--resume", is_flag=True,
                     help="Continue the run in --output: finished steps are kept, a training step "
                          "continues from its last checkpoint (settings from its recipe.yaml)."),
        click.option("--checkpoint-every", type=int, default=200, show_default=True,
                     help="Optimizer steps between training checkpoints (also at each epoch end; "
                          "0 = none)."),
        click.option("--num-processes", type=int, default=1, show_default=True,
                     help="Train data-parallel on N processes (gloo on CPU; one per GPU)."),
        click.option("--method-option", "method_option", multiple=True, metavar="KEY=VALUE",
                     help="An option of the method's pass, e.g. schedule=oneshot (repeatable)."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Allow a model folder's own Python code (never implied by a recipe)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _method_options(items) -> dict:
    out = {}
    for item in items or ():
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--method-option {item!r} must be KEY=VALUE, e.g. schedule=oneshot")
        out[key.strip()] = value.strip()
    return out


def apply_cli(cfg, click_ctx, *, recipe=None, resume=False, checkpoint_every=200, num_processes=1,
              method_option=(), trust_remote_code=False):
    """``cfg`` (built from the flags) merged with the recipe: recipe values replace flags left at
    their defaults; flags given on the command line win. With ``--resume`` and no ``--recipe`` the
    output folder's recipe.yaml is the base."""
    import click
    from click.core import ParameterSource
    explicit = {PARAM_FIELDS.get(name, name) for name in click_ctx.params
                if click_ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}
    path = recipe
    if path is None and resume and (Path(cfg.output) / RECIPE_NAME).is_file():
        path = Path(cfg.output) / RECIPE_NAME
    values = load_recipe(path) if path else {}
    mine = {"resume": resume, "checkpoint_every": checkpoint_every, "num_processes": num_processes,
            "trust_remote_code": trust_remote_code, "method_options": _method_options(method_option)}
    updates = {}
    for name, value in values.items():
        if name not in explicit:
            updates[name] = value
        elif name == "gates":
            updates[name] = {**value, **cfg.gates}
    for name, value in mine.items():
        if name in explicit or name not in values:
            updates[name] = value
    fields = {f.name for f in dataclasses.fields(cfg)}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in updates.items() if k in fields})
    if not cfg.model:
        raise click.UsageError("missing MODEL: give a model (alias, folder or hub id) or a --recipe with 'model:'")
    return cfg


__all__ = ["check_settings", "cli_options", "apply_cli"]
