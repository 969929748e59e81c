"""The settings of one `compress run` (:class:`RunConfig`) and the checks their values alone
decide, plus the text rules that recipes, flags and pass specs share. A leaf of the core: the
recipe reader, the flag merger (:mod:`compressor.run_settings`), the profile grid and the run
itself import it; it imports only :mod:`compressor.errors`. The checks that need more (method and
target names in the registry, the gates, the MLflow store) are the run's
(:func:`compressor.run.check_config`)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from compressor.errors import ConfigError, check_choice, check_range

GRANULARITIES = ("weight", "structured")
CLASSIFICATION, REGRESSION, EMBEDDINGS = "classification", "regression", "embeddings"
TOKEN_CLASSIFICATION = "token-classification"  # NER taggers: a tag per word (compressor.data)
MULTI_LABEL = "multi-label"  # any number of labels per text: sigmoid outputs, micro F1 (compressor.data)
QUESTION_ANSWERING = "question-answering"  # extractive QA, SQuAD v1.1/v2.0 (compressor.qa)
TASK_TYPES = (CLASSIFICATION, REGRESSION, EMBEDDINGS, TOKEN_CLASSIFICATION, MULTI_LABEL, QUESTION_ANSWERING)
"""What ``--task-type`` names (unset: detected from the labels, :func:`compressor.data.detect_task_type`)."""
QUANTIZE = ("none", "dynamic", "static", "auto", "fused")  # auto: the variant measured fastest within dev tolerance
# (choose-deploy); fused: ort-fuse then dynamic INT8, the structure searched on that graph
RECIPE_NAME = "recipe.yaml"
OPTION_KEY = re.compile(r"[A-Za-z_][\w-]*")
"""A pass option name (and a step name in a recipe's pipeline list)."""
SPEC_CHARS = frozenset(",{}=\n\r")
"""Characters a pass option value may not contain (they delimit a spec)."""
# The budget rule of `compress run` without --epochs: the teacher and the recovery train at least
# this many optimizer steps (a small task gets more epochs; a large one keeps the pass's epochs).
MIN_STEPS = 500
MIN_SECONDS = 2.0  # a fast shape gets more timed rounds, until about this many seconds (at most 20x runs)
METHOD_FLAGS = {"sparsity": "--sparsity", "granularity": "--granularity", "max_length": "--max-length",
                "epochs": "--epochs"}
"""Method options set by their own flag, never through ``--method-option``."""


@dataclass(frozen=True)
class RunConfig:
    """Everything `compress run` needs; the CLI flags map one to one onto these fields."""

    model: str = "minilm"
    method: str = "magnitude"
    sparsity: float = 0.9
    granularity: str = "weight"
    task: str | None = "rotten-tomatoes"
    train_file: str | None = None
    eval_file: str | None = None
    teacher: str | None = None
    pipeline: str | None = None
    targets: tuple[str, ...] = ("cpu",)
    output: str = "out"
    seed: int = 0
    max_train: int = 0
    max_eval: int = 0
    max_length: int = 64
    dev_size: float = 0.0             # dev split carved from train: rows (>= 1), a fraction (< 1), 0 = default
    columns: str | None = None        # text/pair/label columns of headerless --train/--eval files
    doc_stride: int | None = None     # question answering: tokens two windows share (None: 128, at most max_length // 2)
    task_type: str | None = None      # classification / regression / embeddings / token-classification / multi-label; None: detected
    pooling: str | None = None        # embeddings: mean / cls / max (None: the model folder's, else mean)
    normalize: bool | None = None     # embeddings: L2-normalize (None: the model folder's, else yes)
    contrastive: float | None = None  # embeddings: weight of the in-batch InfoNCE term in distillation (None: 0)
    sts_file: str | None = None       # embeddings: sentence pairs with gold scores (Spearman of cosines)
    retrieval_dir: str | None = None  # embeddings: a BEIR folder (corpus, queries, qrels: nDCG@10, recall@10)
    unlabeled_file: str | None = None  # embeddings: more training texts, one per line (compressor.unlabeled)
    static_baseline: str | None = None  # embeddings: a model2vec folder, a baseline row (compressor.static_baseline)
    epochs: int = 0
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    seq_lens: tuple[int, ...] = (32, 128)
    runs: int = 30
    min_seconds: float = MIN_SECONDS  # fast shapes get more timed rounds, until about this long
    real_shapes: bool = True
    sparse_init: bool = True
    quantize: str = "dynamic"         # the deployment: INT8 (dynamic / static QDQ / fused), fp32 (none) or measured (auto)
    recover: bool = False             # distil the compressed model from the teacher after the method
    recover_steps: int = 0            # --recover: at least this many optimizer steps (0: MIN_STEPS)
    speedup: float = 0.0              # structure searched for this measured speedup on the first target
    max_drop: float = 0.0             # dev accuracy points the deployment may lose: the fastest within (budget.py)
    vocab_prune: bool = False         # keep only the tokens the task's texts use (and vocab_texts')
    vocab_texts: str | None = None    # extra texts whose tokens stay (e.g. production traffic)
    max_positions: int = 0            # trim position embeddings to this many (0: keep)
    hidden_width: int | str = 0       # hidden-prune to this many hidden units after the method (0: keep; "auto": searched)
    embed_int8: bool = False          # INT8 embedding tables with a scale per row
    allow_fallback: bool = False
    allow_collapse: bool = False      # a collapse to the majority class trains on and exits 0 (else 4 / 3)
    progress: bool = True
    command: str = ""
    extra: dict = field(default_factory=dict)
    gates: dict = field(default_factory=dict)  # quality gates, see compressor.gates
    mlflow_uri: str | None = None
    mlflow_experiment: str = "compressor"
    resume: bool = False              # continue the run in `output` (compressor.resume)
    checkpoint_every: int = 200       # optimizer steps between training checkpoints (0 = none)
    num_processes: int = 1            # data-parallel training processes
    trust_remote_code: bool = False   # only from --trust-remote-code, never from a recipe
    method_options: dict = field(default_factory=dict)  # extra options of the method's pass

    def validate(self) -> None:
        """Reject bad values before anything is loaded or written (the names of the method and
        targets, the gates and the MLflow store are checked by :func:`compressor.run.check_config`)."""
        if not isinstance(self.sparsity, (int, float)) or isinstance(self.sparsity, bool):
            raise ConfigError(f"sparsity={self.sparsity!r} is not a number: allowed [0, 1)")
        check_range("sparsity", float(self.sparsity), 0.0, 1.0, hi_open=True)
        check_choice("granularity", self.granularity, GRANULARITIES)
        check_choice("quantize", self.quantize, QUANTIZE)
        if self.speedup:
            check_range("speedup", float(self.speedup), 1.0, 1e4, lo_open=True)
        if self.max_drop:
            check_range("max_drop", float(self.max_drop), 0.0, 100.0, lo_open=True)
            if self.speedup or self.pipeline:
                raise ConfigError(f"--max-drop {self.max_drop:g} searches the speedup itself: drop "
                                  f"{'--speedup' if self.speedup else '--pipeline'}")
        if self.recover_steps:
            check_range("recover_steps", self.recover_steps, 1, 10**7)
            if not self.recover:
                raise ConfigError(f"--recover-steps {self.recover_steps} sets the recovery's length: add --recover")
        if self.vocab_texts and not self.vocab_prune:
            raise ConfigError(f"--vocab-texts {self.vocab_texts!r} needs --vocab-prune")
        if self.vocab_texts and SPEC_CHARS & set(self.vocab_texts):
            raise ConfigError(f"--vocab-texts {self.vocab_texts!r}: a path without , {{ }} = or line breaks")
        if self.hidden_width == "auto":
            if not (self.speedup or self.max_drop):
                raise ConfigError("--hidden-width auto needs --speedup X or --max-drop D: the width is chosen "
                                  "with the structure searched for a speedup")
            if self.task_type == EMBEDDINGS:
                raise ConfigError("--hidden-width auto narrows an embedding model's vectors (their size is the "
                                  "hidden size): not for --task-type embeddings")
        elif self.hidden_width:
            if isinstance(self.hidden_width, bool) or not isinstance(self.hidden_width, int):
                raise ConfigError(f"hidden_width={self.hidden_width!r} is not allowed: an integer >= 64 (hidden "
                                  "units) or auto")
            check_range("hidden_width", self.hidden_width, 64, 1 << 20)
        if self.max_positions:
            check_range("max_positions", self.max_positions, self.max_length, 4096)
            for s in self.seq_lens:
                check_range("sequence length (profiled; --max-positions)", s, 1, self.max_positions)
        for name, values in (("batch size", self.batch_sizes), ("sequence length", self.seq_lens)):
            for v in values:
                check_range(name, v, 1, 4096)
        check_range("runs", self.runs, 1, 100000)
        check_range("min_seconds", self.min_seconds, 0.0, 3600.0)
        check_range("max_length", self.max_length, 8, 512)
        if self.doc_stride is not None and (isinstance(self.doc_stride, bool) or not isinstance(self.doc_stride, int)
                                            or not 0 <= self.doc_stride < self.max_length):
            raise ConfigError(f"doc_stride={self.doc_stride!r} is not allowed with max_length={self.max_length}: "
                              f"allowed an integer in [0, {self.max_length - 1}] (below --max-length)")
        if isinstance(self.dev_size, bool) or not isinstance(self.dev_size, (int, float)):
            raise ConfigError(f"dev_size={self.dev_size!r} is not a number: rows (>= 1), a fraction "
                              "in (0, 1), or 0 for the default")
        check_range("dev_size", float(self.dev_size), 0.0, 10**7)
        if self.task_type is not None:
            check_choice("task_type", self.task_type, TASK_TYPES)
        if self.task_type != EMBEDDINGS:
            given = [f for f, v in (("--pooling", self.pooling), ("--normalize", self.normalize),
                                    ("--contrastive", self.contrastive),
                                    ("--sts", self.sts_file), ("--retrieval", self.retrieval_dir),
                                    ("--unlabeled", self.unlabeled_file),
                                    ("--static-baseline", self.static_baseline)) if v is not None]
            if given:
                hint = (" (a classifier's recovery reads extra texts as distill{unlabeled=FILE} in --pipeline)"
                        if "--unlabeled" in given else "")
                raise ConfigError(f"{' and '.join(given)} apply to an embedding model: add --task-type embeddings{hint}")
        if self.pooling is not None:
            check_choice("pooling", self.pooling, ("mean", "cls", "max"))
        if self.contrastive is not None:
            check_range("contrastive", self.contrastive, 0.0, 100.0)
        if self.columns is not None and not self.train_file:
            raise ConfigError(f"--columns {self.columns!r} applies to --train/--eval files only, not to a "
                              "named task")
        if bool(self.train_file) != bool(self.eval_file):
            raise ConfigError("--train and --eval go together: give both files or neither")
        if not isinstance(self.allow_collapse, bool):
            raise ConfigError(f"allow_collapse={self.allow_collapse!r} is not allowed: true or false")
        check_settings(self)  # resume, processes, checkpoints, method options


def check_settings(cfg) -> None:
    """ConfigError for bad resume, process, checkpoint and method-option settings of ``cfg``
    (called by :meth:`RunConfig.validate`)."""
    for name, lo, hi in (("checkpoint_every", 0, 10**9), ("num_processes", 1, 1024)):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}={value!r} is not an integer: allowed [{lo}, {hi}]")
        check_range(name, value, lo, hi)
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip().isdigit() and int(world) > 1 and cfg.num_processes > 1:
        raise ConfigError(f"num_processes={cfg.num_processes} forks training processes, but this is one "
                          f"rank of {world} already (WORLD_SIZE={world}, from torchrun or accelerate "
                          "launch): drop --num-processes, the launcher's ranks train together")
    if world.strip().isdigit() and int(world) > 1 and getattr(cfg, "max_drop", 0):
        raise ConfigError(f"--max-drop {cfg.max_drop:g} runs its candidates as one process: under torchrun / "
                          "accelerate launch give --speedup X instead")
    opts = cfg.method_options or {}
    if opts and cfg.pipeline:
        raise ConfigError(f"method options {', '.join(opts)} apply to --method, not to --pipeline: "
                          "put them into the spec, e.g. magnitude{schedule=oneshot}")
    for key, value in opts.items():
        if key in METHOD_FLAGS:
            raise ConfigError(f"method option '{key}' is set with {METHOD_FLAGS[key]} (recipe: "
                              f"method.{key} or training.epochs), not as an option")
        if not isinstance(key, str) or not OPTION_KEY.fullmatch(key):
            raise ConfigError(f"method option name {key!r} is not allowed: letters, digits, _ and -")
        if not str(value).strip() or SPEC_CHARS & set(str(value)):
            raise ConfigError(f"method option {key}={str(value)!r} is not allowed: a value without "
                              ", { } = or line breaks")


__all__ = ["RunConfig", "check_settings", "GRANULARITIES", "QUANTIZE", "TASK_TYPES", "CLASSIFICATION", "REGRESSION", "EMBEDDINGS", "TOKEN_CLASSIFICATION", "MULTI_LABEL", "QUESTION_ANSWERING", "RECIPE_NAME", "OPTION_KEY", "SPEC_CHARS",
           "MIN_SECONDS", "METHOD_FLAGS"]
