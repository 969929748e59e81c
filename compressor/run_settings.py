"""The settings of `compress run` that come from flags rather than from a recipe's values: the
extra flags (``--recipe``, ``--resume``, ``--num-processes``, ...), merging the flags with a recipe
(:func:`apply_cli`). Their checks live with the settings (:func:`compressor.config.check_settings`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from compressor.config import RECIPE_NAME
from compressor.errors import ConfigError
from compressor.recipe import load_recipe

# `compress run` parameters whose RunConfig field has another name.
PARAM_FIELDS = {"pipeline_spec": "pipeline", "no_sparse_init": "sparse_init",
                "min_retention": "gates", "min_speedup": "gates", "max_latency_ms": "gates",
                "max_size_mb": "gates", "method_option": "method_options"}


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


__all__ = ["cli_options", "apply_cli"]
