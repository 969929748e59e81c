"""Pass base class: a frozen dataclass whose fields are its options.

Modelled on onnx-ir's pass infrastructure and xDSL's option dataclasses: ``__call__`` checks
that the artifact is of the kind the pass consumes, runs it, and checks that the result is a
:class:`PassResult` holding the kind the pass produces.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

from compressor.errors import ConfigError


FINETUNED, PRETRAINED = "finetuned", "pretrained"
STARTS = (FINETUNED, PRETRAINED)


@dataclass
class StepRecord:
    """What one pipeline step did: its spec, folder, seconds, whether it modified the model,
    metrics (written by the pipeline, read back by the step journal on resume)."""

    index: int
    name: str
    spec: str
    folder: str
    seconds: float
    modified: bool
    metrics: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PassResult:
    """What a pass returns: the new artifact, whether it changed anything, its metrics and, from
    a pass that trains one (``finetune``), the dense ``teacher`` (a TorchModel) later passes
    distil from: the pipeline makes it ``ctx.teacher`` and the step journal saves it."""

    artifact: Any
    modified: bool
    metrics: dict = field(default_factory=dict)
    teacher: Any = None


def option(default, help: str, choices: tuple | None = None):
    """Declare a pass option: a dataclass field with a default, a help text and optional choices."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class Pass:
    """Base of every pass. Subclasses are ``@dataclass(frozen=True)`` and set:

    - ``name``: the name used in specs and the CLI;
    - ``consumes`` / ``produces``: ``"torch"`` or ``"onnx"`` (see :mod:`compressor.artifact`);
    - ``run(artifact, ctx) -> PassResult``.

    A pass that ``compress run --method`` may run sets ``is_method = True`` and says where its
    student starts: ``starts_from = "finetuned"`` (it prunes the fine-tuned teacher itself) or
    ``"pretrained"`` (it prunes the pre-trained model while distilling from the teacher). The
    run hands it those of ``sparsity``, ``granularity``, ``max_length`` and ``epochs`` that are
    among its options.

    A pass that ``compress run`` adds after the method declares where: ``run_order`` (its place:
    passes run in increasing order after the method's steps) and :meth:`run_step`, the step it adds
    for the run's settings (None: not in this run). A pass with ``starts_deployment`` begins the
    deployment part of the run (the compressed model's other precision is exported from the step
    before it). So a new stage of ``compress run`` is a pass file, with no core edit.

    Validate options in ``__post_init__`` with :func:`compressor.errors.check_range`.
    """

    name: ClassVar[str] = ""
    consumes: ClassVar[str] = "torch"
    produces: ClassVar[str] = "torch"
    is_method: ClassVar[bool] = False
    starts_from: ClassVar[str] = FINETUNED
    run_order: ClassVar[int | None] = None
    starts_deployment: ClassVar[bool] = False

    @classmethod
    def run_step(cls, cfg, method) -> str | None:
        """The spec item this pass adds to ``compress run`` for ``cfg`` (a
        :class:`compressor.config.RunConfig`) after ``method`` (the method's pass class), or None."""
        return None

    def run(self, artifact, ctx) -> PassResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, artifact, ctx) -> PassResult:
        kind = getattr(artifact, "kind", None)
        if kind != self.consumes:
            raise ConfigError(f"pass '{self.name}' consumes a {self.consumes} model, got {kind!r}")
        result = self.run(artifact, ctx)
        if not isinstance(result, PassResult):
            raise TypeError(f"pass '{self.name}' returned {type(result).__name__}, not PassResult")
        if getattr(result.artifact, "kind", None) != self.produces:
            raise TypeError(f"pass '{self.name}' must produce a {self.produces} model, "
                            f"produced {getattr(result.artifact, 'kind', None)!r}")
        return result

    @classmethod
    def options(cls) -> list[dict]:
        """The pass's options: name, type name, default, help and choices."""
        hints = typing.get_type_hints(cls)
        out = []
        for f in dataclasses.fields(cls):
            out.append({"name": f.name, "type": _type_name(hints.get(f.name, str)),
                        "default": f.default, "help": f.metadata.get("help", ""),
                        "choices": f.metadata.get("choices")})
        return out

    def to_spec(self) -> str:
        """This pass as a spec item, e.g. ``magnitude{sparsity=0.9}`` (non-default options only)."""
        changed = [f"{f.name}={getattr(self, f.name)}" for f in dataclasses.fields(self)
                   if getattr(self, f.name) != f.default]
        return self.name + ("{" + ",".join(changed) + "}" if changed else "")


def same_spec(a: str | None, b: str | None) -> bool:
    """Whether two :meth:`Pass.to_spec` items name the same pass with the same options, in any
    option order (a pass's options may be reordered, e.g. when it gains a shared base)."""
    def key(spec):
        name, _, opts = (spec or "").partition("{")
        return name, sorted(o for o in opts.rstrip("}").split(",") if o)
    return a is not None and b is not None and key(a) == key(b)


def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp))


def coerce_option(cls: type[Pass], key: str, raw: str):
    """Convert the text ``raw`` to the type of option ``key`` of pass class ``cls``."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if key not in fields:
        allowed = ", ".join(sorted(fields)) or "none"
        raise ConfigError(f"unknown option '{key}' for pass '{cls.name}': allowed {allowed}")
    tp = typing.get_type_hints(cls)[key]
    text = str(raw).strip()
    try:
        if tp is bool:
            low = text.lower()
            if low not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            value = low in ("true", "1", "yes")
        elif tp is int:
            value = int(text)
        elif tp is float:
            value = float(text)
        else:
            value = text
    except ValueError:
        raise ConfigError(f"option {cls.name}.{key}={text!r} is not a valid {_type_name(tp)}") from None
    choices = fields[key].metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"option {cls.name}.{key}={text!r} is not allowed: choose one of "
                          f"{', '.join(map(str, choices))}")
    return value
