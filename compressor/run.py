"""`compress run` as straight-line named steps: check the plan, load data and models, train the
dense teacher, compress, export both models, measure accuracy on ONNX, profile both side by
side, report. Each step is a function below that fits on a screen."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import shlex
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from compressor import __version__, ranks
from compressor.config import MIN_STEPS, RunConfig
from compressor.context import RunContext
from compressor.errors import ConfigError, check_choice
from compressor.pass_base import PRETRAINED, StepRecord
from compressor.pipeline import Pipeline, run_parts
from compressor.registry import METHODS, get_method, get_target

log = logging.getLogger(__name__)

# What `--method` hands the method's pass, among the options the pass has.
METHOD_SETTINGS = ("sparsity", "granularity", "max_length", "epochs")


def method_spec(cfg: RunConfig) -> str:
    """The compression pipeline for ``--method``: prune/distill, strip if structured, recover
    (``--recover``), vocabulary pruning and position trimming, export, INT8 embeddings, INT8
    (``--quantize``), sparse initializers. The method's pass gets
    those of :data:`METHOD_SETTINGS` it declares as options."""
    cls = get_method(cfg.method)
    own = {f.name for f in dataclasses.fields(cls)}
    values = {"sparsity": cfg.sparsity, "granularity": cfg.granularity,
              "max_length": cfg.max_length, "epochs": cfg.epochs or None}
    opts = [f"{k}={values[k]}" for k in METHOD_SETTINGS if k in own and values[k] is not None]
    search = []
    if cfg.max_drop:  # the plan's spec at the ladder's first speedup (compressor.budget runs them all)
        from compressor.budget import LADDER
        if not getattr(cls, "searches_speedup", False):
            methods = sorted(m for m in METHODS if getattr(get_method(m), "searches_speedup", False))
            raise ConfigError(f"--max-drop {cfg.max_drop:g} needs a method whose first step prunes to a "
                              f"speedup without training (--method {' or '.join(methods)}); got --method {cfg.method}")
        cfg = dataclasses.replace(cfg, speedup=LADDER[0], max_drop=0.0)
    if cfg.speedup:
        searching = sorted(m for m in METHODS if getattr(get_method(m), "searches_speedup", False))
        takes = sorted(m for m in METHODS if "structure" in {f.name for f in dataclasses.fields(get_method(m))})
        speedup = [f"speedup={cfg.speedup:g}", f"target={cfg.targets[0]}",
                   f"precision={ {'none': 'fp32', 'fused': 'int8f'}.get(cfg.quantize, 'int8')}",
                   *([] if not getattr(cfg, "hidden_width", 0) else ["hidden_widths=auto"]
                     if cfg.hidden_width == "auto" else [f"hidden={cfg.hidden_width}"])]
        opts = [o for o in opts if not o.startswith("sparsity=")]
        if getattr(cls, "searches_speedup", False):
            opts += speedup
        elif cfg.hidden_width == "auto":
            raise ConfigError(f"--hidden-width auto chooses the width with the retraining-free search: --method "
                              f"{' or '.join(searching)}; got --method {cfg.method}")
        elif "structure" in own and cfg.granularity == "structured":
            # the structure is searched on the target's latency table, the method trains to it
            search = [f"{searching[0]}{{{','.join(speedup)},search_only=true,max_length={cfg.max_length}}}"]
            opts += ["structure=searched"]
        else:
            raise ConfigError(f"--speedup {cfg.speedup:g} needs a method that searches its structure on the "
                              f"target (--method {' or '.join(searching) or '(none registered)'}) or a structured "
                              f"method that trains to the searched one (--method {' or '.join(takes)} "
                              f"--granularity structured); got --method {cfg.method} --granularity {cfg.granularity}")
    opts += [f"{k}={v}" for k, v in cfg.method_options.items()]  # checked by check_settings
    steps = search + [f"{cls.name}{{{','.join(opts)}}}"]
    return ",".join(steps + run_stages(cfg, cls))


def run_stages(cfg: RunConfig, method) -> list[str]:
    """The steps after the method's: each registered pass that declares a ``run_order`` adds its
    :meth:`~compressor.pass_base.Pass.run_step` for these settings, in increasing order (strip,
    recovery, vocabulary and positions, export, INT8 embeddings, INT8, sparse initializers)."""
    from compressor.registry import PASSES, get_pass
    passes = [get_pass(name) for name in PASSES]
    staged = sorted((p for p in passes if p.run_order is not None), key=lambda p: p.run_order)
    return [step for p in staged if (step := p.run_step(cfg, method))]


@dataclass
class Plan:
    """What the run will do, checked before anything is read or written: the torch passes, the
    ONNX passes up to quantization (``onnx_part``) and from it on (``deploy_part``, maybe empty)."""

    torch_part: Pipeline
    onnx_part: Pipeline
    deploy_part: Pipeline
    targets: list
    out: Path


@dataclass
class Inputs:
    """The loaded task data and models, and the context the passes share."""

    data: object
    pretrained: object
    ctx: RunContext
    evals: dict = dataclasses.field(default_factory=dict)  # embeddings: "sts" pairs, "retrieval" task
    static: object = None  # embeddings: the --static-baseline model (compressor.static_baseline)


def run(cfg: RunConfig) -> dict:
    """Run the whole job and return the report dict (also written to ``cfg.output``). A rank other
    than 0 under ``torchrun``/``accelerate launch`` only takes part in training (:func:`follow`)."""
    if ranks.is_follower():
        return follow(cfg)
    plan = check_plan(cfg)
    inputs = load_inputs(cfg, plan)
    records, dense_torch, compressed = compress(cfg, plan, inputs)
    dense_onnx = export_dense(inputs.ctx, dense_torch)
    variants = baselines(inputs.ctx, dense_torch, dense_onnx, compressed)
    models = score(cfg, inputs, records, variants)
    onnx_models = {k: v[1] for k, v in variants.items()}
    onnx_models.update(score_static(cfg, inputs, models))
    grid = profile(cfg, plan, inputs, dense_torch, onnx_models, models)
    return report(cfg, plan, inputs, records, models, grid)


def follow(cfg: RunConfig) -> None:
    """A follower rank (:mod:`compressor.ranks`): the same settings and inputs as rank 0, the
    teacher's fine-tuning and the torch passes with their outputs in a scratch folder (removed at
    the end), each step continued from rank 0's saved output. Rank 0 alone exports, profiles and
    writes the output folder; returns None."""
    check_config(cfg)
    torch_part = _split(Pipeline(cfg.pipeline or method_spec(cfg)))[0]
    logging.disable(logging.INFO)  # rank 0 logs for all
    with tempfile.TemporaryDirectory(prefix=f"compressor-rank{ranks.rank()}-") as scratch:
        plan = Plan(torch_part, Pipeline([]), Pipeline([]), [], Path(scratch))
        compress(cfg, plan, load_inputs(cfg, plan, leader=Path(cfg.output)))
    return None


def check_plan(cfg: RunConfig) -> Plan:
    """1. The settings, the pipeline, the targets, the model names and the output folder, cheapest
    first and before any data is read (a typo fails in a second, not after loading)."""
    from compressor.models import check_family, check_source
    from compressor.workdir import check_output, prepare_workdir
    check_config(cfg)
    torch_part, onnx_part, deploy_part = _split(Pipeline(cfg.pipeline or method_spec(cfg)))
    targets = [get_target(t)(allow_fallback=cfg.allow_fallback) for t in cfg.targets]
    for target in targets:
        target.check_available()  # a missing GPU provider fails now, not after training
    for name in (cfg.model, cfg.teacher):
        if name:
            check_source(name)  # a missing folder, a bad hub id, an unreachable hub: one line
            check_family(name)  # a family no adapter supports: refused before the data is read
    out = check_output(cfg.output)
    prepare_workdir(out, cfg)  # --resume: same settings as before; else: old checkpoints go
    return Plan(torch_part, onnx_part, deploy_part, [t.with_workdir(out) for t in targets], out)


def check_config(cfg: RunConfig) -> None:
    """The settings as a whole: their values (:meth:`RunConfig.validate`), the method and target
    names in the registry, the quality gates, and with an MLflow URI that MLflow is installed and
    its store answers."""
    from compressor.gates import parse_gates
    from compressor.registry import METHODS, TARGETS  # read now: registered passes and targets count
    cfg.validate()
    check_choice("method", cfg.method, sorted(METHODS))
    for t in cfg.targets:
        check_choice("target", t, sorted(TARGETS))
    parse_gates(cfg.gates)
    if cfg.mlflow_uri is not None:
        from compressor.tracking import client
        client(cfg.mlflow_uri)  # MLflow installed and the store answers


def load_inputs(cfg: RunConfig, plan: Plan, leader: Path | None = None) -> Inputs:
    """2. Data and models (all inputs are checked before the output folder is written to), then
    the run's recipe.yaml, its first file. Under a launcher, join the ranks' process group
    (``leader``: rank 0's output folder, on a follower rank)."""
    from compressor.data import load_task
    from compressor.models import load_model
    from compressor.profiling import check_seq_lens
    from compressor.registry import family_of
    from compressor.recipe import write_recipe
    from compressor.qa import check_windows, doc_stride_for
    data = load_task(cfg.task if not cfg.train_file else None, cfg.train_file, cfg.eval_file,
                     seed=cfg.seed, columns=cfg.columns, task_type=cfg.task_type,
                     doc_stride=doc_stride_for(cfg.doc_stride, cfg.max_length))
    data = data.subsample(cfg.max_train or None, cfg.max_eval or None, seed=cfg.seed)
    data = data.carve_dev(_dev_size(cfg.dev_size), seed=cfg.seed)  # every selection is made on dev
    evals = _embedding_evals(cfg) if data.embeddings else {}  # bad files fail before any model loads
    static, unlabeled = _embedding_inputs(cfg) if data.embeddings else (None, None)
    _seed_everything(cfg.seed)  # the new classifier head is drawn from the global RNG
    if data.embeddings:
        pretrained, teacher, data = _load_embedder(cfg, data, unlabeled)
    else:
        head = ({"problem_type": "regression"} if data.regression else  # one output, MSE
                {"problem_type": "multi_label_classification"} if data.multi_label else  # sigmoid outputs, BCE
                {"token_classification": True} if data.tagging else  # a tag per token, per-token CE
                {"question_answering": True} if data.question_answering else {})  # start/end logits, span CE
        pretrained = load_model(cfg.model, num_labels=data.num_labels, label_names=data.label_names,
                                trust_remote_code=cfg.trust_remote_code, **head)
        teacher = None
        if cfg.teacher:
            teacher = load_model(cfg.teacher, num_labels=data.num_labels, label_names=data.label_names,
                                 trust_remote_code=cfg.trust_remote_code, **head)
    check_seq_lens(cfg.seq_lens, family_of(pretrained.model).max_tokens())
    for model in (pretrained, teacher) if data.question_answering else ():  # every question fits its windows
        if model is not None:
            check_windows(model.tokenizer, data.train + data.dev + data.eval, cfg.max_length)
    ctx = RunContext(workdir=plan.out, seed=cfg.seed, data=data, teacher=teacher, pretrained=pretrained,
                     max_length=cfg.max_length, progress=cfg.progress and leader is None, resume=cfg.resume,
                     checkpoint_every=cfg.checkpoint_every, num_processes=cfg.num_processes,
                     device=ranks.device() if ranks.launched() else "cpu", leader_workdir=leader,
                     allow_collapse=cfg.allow_collapse)
    ranks.start(ctx.device)
    write_recipe(plan.out, cfg)
    return Inputs(data, pretrained, ctx, evals, static)


def _embedding_evals(cfg: RunConfig) -> dict:
    """``--sts`` pairs and the ``--retrieval`` task (:mod:`compressor.embedding_metrics` readers)."""
    from compressor.embedding_metrics import read_retrieval, read_sts
    out = {}
    if cfg.sts_file:
        out["sts"] = read_sts(cfg.sts_file)
    if cfg.retrieval_dir:
        out["retrieval"] = read_retrieval(cfg.retrieval_dir)
    return out


def _embedding_inputs(cfg: RunConfig) -> tuple:
    """The ``--static-baseline`` model and the ``--unlabeled`` texts (each None when not given),
    read before any model loads."""
    from compressor.static_baseline import load_static
    from compressor.unlabeled import read_texts
    return (load_static(cfg.static_baseline) if cfg.static_baseline else None,
            read_texts(cfg.unlabeled_file) if cfg.unlabeled_file else None)


def _load_embedder(cfg: RunConfig, data, unlabeled: list[str] | None = None):
    """2, for an embedding task: the model as an embedder (its sentence-transformers pooling, or
    ``--pooling``/``--normalize``), its own teacher (no fine-tuning: the dense model is what the
    compressed one must reproduce) unless ``--teacher`` names another, and the task's texts
    labelled with the teacher's embeddings (:func:`compressor.embedder.teacher_targets`)."""
    from compressor.embedder import load_source, settings_of, teacher_targets
    pretrained = load_source(cfg.model, cfg.pooling, cfg.normalize, cfg.trust_remote_code, cfg.contrastive)
    teacher = load_source(cfg.teacher, cfg.pooling, cfg.normalize, cfg.trust_remote_code) if cfg.teacher else pretrained
    data = teacher_targets(data, teacher, cfg.max_length)
    if unlabeled:  # --unlabeled: more training texts, labelled the same way (never dev or eval)
        from compressor.unlabeled import add_unlabeled
        data = add_unlabeled(data, unlabeled, teacher, cfg.max_length, cfg.unlabeled_file)
    data.info["embedding_settings"] = settings_of(pretrained.model)
    return pretrained, teacher, data


def compress(cfg: RunConfig, plan: Plan, inputs: Inputs):
    """3. The dense teacher (fine-tuned here unless given), then the torch passes from where the
    method starts, then export, the graph passes and the deployment's quantization. Returns the
    step records, the dense torch model and the compressed ``(torch, final onnx, fp32 onnx)``."""
    ctx, pretrained = inputs.ctx, inputs.pretrained
    records: list[StepRecord] = []
    if ctx.teacher is None and cfg.pipeline is None:
        spec = "finetune" + (f"{{epochs={cfg.epochs},max_length={cfg.max_length}}}" if cfg.epochs
                             else f"{{max_length={cfg.max_length},min_steps={MIN_STEPS}}}")
        records += Pipeline(spec).run(pretrained, ctx).records
    dense_torch = ctx.teacher or pretrained
    start = dense_torch
    if cfg.pipeline is not None or get_method(cfg.method).starts_from == PRETRAINED:
        start = pretrained
    if cfg.max_drop:  # the fastest --speedup whose deployment stays within the dev budget
        from compressor.budget import search
        found, compressed, _ = search(cfg, ctx, ctx.teacher or dense_torch, lambda x: _parts(cfg, x),
                                      first_index=len(records) + 1)
        return records + found, ctx.teacher or dense_torch, compressed
    steps, artifacts = run_parts((plan.torch_part, plan.onnx_part, plan.deploy_part), start, ctx,
                                 first_index=len(records) + 1)
    return records + steps, ctx.teacher or dense_torch, (artifacts[0], artifacts[2], artifacts[1])


def export_dense(ctx: RunContext, dense_torch):
    """4. The dense baseline, exported and verified the same way (``out/dense/``)."""
    return _in_folder(ctx, "dense", lambda: _graph_pass("export")(dense_torch, ctx).artifact)


def baselines(ctx: RunContext, dense_torch, dense_onnx, compressed) -> dict:
    """4b. Every row the user compares: ``label -> (torch model, ONNX model)``. The dense model in
    fp32 and with dynamic INT8 (``out/dense-int8/``: the baseline users reach for first), and the
    compressed model as deployed plus its other precision: the fp32 export when the deployment is
    INT8, or an INT8 copy (``out/compressed-int8/``) when it is fp32."""
    comp_torch, final, fp32 = compressed
    # one quantize_dynamic call, ORT's defaults; for an embedding model per channel, as
    # sentence-transformers' export_dynamic_quantized_onnx_model (Optimum's avx512_vnni config) does
    embedding = bool(getattr(ctx.data, "embeddings", False))
    int8 = _graph_pass("quantize", mode="dynamic", ops="all", per_channel=embedding)
    quiet = dataclasses.replace(ctx, data=None)  # the rows are scored below, once
    rows = {"dense": (dense_torch, dense_onnx),
            "dense-int8": (None, _in_folder(quiet, "dense-int8", lambda: int8(dense_onnx, quiet).artifact)),
            "compressed": (comp_torch, final)}
    if final is not fp32:
        rows["compressed-fp32"] = (comp_torch, fp32)
    else:
        rows["compressed-int8"] = (None, _in_folder(quiet, "compressed-int8", lambda: int8(final, quiet).artifact))
    return rows


def _graph_pass(name: str, **options):
    from compressor.registry import get_pass
    return get_pass(name)(**options)


def _in_folder(ctx: RunContext, folder: str, make):
    """``make()`` with ``ctx.step_dir`` set to ``workdir/folder`` (a step outside the pipeline)."""
    ctx.step_dir = ctx.workdir / folder
    try:
        return make()
    finally:
        ctx.step_dir = None


def score(cfg: RunConfig, inputs: Inputs, records: list[StepRecord], rows: dict) -> dict:
    """5. Accuracy on the eval split of each row's final ONNX model (and of its PyTorch model, for
    rows that have one) with its Wilson 95% interval (``accuracy_interval``), sizes, parameter
    counts, and how much of the gap between always predicting the majority class and the dense
    model each closes. The compressed row also gets ``versus_paired``: the paired bootstrap 95%
    interval of its accuracy minus dense INT8's and dense's, in points, from the per-example
    correctness on the same eval rows (held here, not written to the report).

    A regression task: :func:`score_regression`; an embedding task: :func:`score_embeddings`; a
    token-classification task: :func:`score_token_classification`; a multi-label task:
    :func:`score_multi_label`."""
    if inputs.data.regression:
        return score_regression(cfg, inputs, records, rows)
    if inputs.data.multi_label:
        return score_multi_label(cfg, inputs, records, rows)
    if inputs.data.tagging:
        return score_token_classification(cfg, inputs, records, rows)
    if inputs.data.question_answering:
        return score_question_answering(cfg, inputs, records, rows)
    if inputs.data.embeddings:
        return score_embeddings(cfg, inputs, records, rows)
    from compressor.metrics import majority_accuracy
    from compressor.onnx_utils import onnx_correct
    from compressor.stats import paired_bootstrap, wilson
    data, models, correct = inputs.data, {}, {}
    for label, (tm, om) in rows.items():
        log.info("evaluating %s on %d eval examples", label, len(data.eval))
        correct[label] = onnx_correct(om, data.eval, max_length=cfg.max_length)  # 0/1 in eval order
        right, n = int(correct[label].sum()), int(correct[label].size)
        models[label] = _row(cfg, data, tm, om, accuracy_onnx=right / n, accuracy_interval=list(wilson(right, n)))
    comp = _rows_done(models, records, trivial=majority_accuracy(data.eval))
    _versus(comp, correct, lambda a, b: paired_bootstrap(a, b, seed=cfg.seed), "", discordant=True)
    return models


def _versus(comp: dict, per_row: dict, paired, what: str, discordant: bool = False) -> None:
    """``comp["versus_paired"][ref]`` for each reference row (dense INT8, dense) in ``per_row``:
    compressed - reference on the same eval rows, in points (x100), from ``paired(compressed's,
    reference's)`` (a paired bootstrap of :mod:`compressor.stats` over ``per_row``'s values);
    ``discordant`` adds the rows only one of them got right (0/1 correctness)."""
    for ref in ("dense-int8", "dense"):
        if ref not in per_row:
            continue
        b = paired(per_row["compressed"], per_row[ref])
        comp["versus_paired"][ref] = {
            "points": 100 * b["diff"], "low": 100 * b["low"], "high": 100 * b["high"], "n": b["n"], "level": b["level"],
            **({"compressed_only": b["a_only"], "reference_only": b["b_only"]} if discordant else {})}
        log.info("compressed - %s: %+.2f points%s (95%% %+.2f..%+.2f, n=%d)", ref,
                 100 * b["diff"], what, 100 * b["low"], 100 * b["high"], b["n"])


def score_regression(cfg: RunConfig, inputs: Inputs, records: list[StepRecord], rows: dict) -> dict:
    """5, for a regression task: the same rows and keys as :func:`score`, in its metric. Each
    ``accuracy_*`` key holds Pearson's r of the model's single output on the eval split (in
    [-1, 1]), ``spearman_onnx`` Spearman's rho beside it, ``metric_name`` "pearson";
    ``accuracy_interval`` is a percentile bootstrap interval of r over the eval rows (no Wilson
    interval: r is not a proportion), ``versus_paired`` the paired bootstrap of the difference in
    r, in points of r (x100; no discordant counts). The trivial baseline (predicting the train
    mean) scores 0, so ``gap_closed`` is ``r / r_dense`` and a collapse is r at most 0.01."""
    from compressor.metrics import REGRESSION_METRIC, regression_scores
    from compressor.onnx_utils import onnx_predictions
    from compressor.stats import paired_bootstrap_pearson, pearson_interval
    data, models, preds = inputs.data, {}, {}
    labels = [e.label for e in data.eval]
    for label, (tm, om) in rows.items():
        log.info("evaluating %s on %d eval examples", label, len(data.eval))
        preds[label] = onnx_predictions(om, data.eval, max_length=cfg.max_length)
        scores = regression_scores(preds[label].tolist(), labels)
        models[label] = _row(cfg, data, tm, om, metric_name=REGRESSION_METRIC, accuracy_onnx=scores["pearson"],
                             spearman_onnx=scores["spearman"], accuracy_interval=list(
                                 pearson_interval(preds[label], labels, seed=cfg.seed)) if len(labels) > 1 else None)
    comp = _rows_done(models, records, trivial=0.0)
    _versus(comp, preds if len(labels) > 1 else {},
            lambda a, b: paired_bootstrap_pearson(a, b, labels, seed=cfg.seed), " of Pearson r")
    return models


def score_token_classification(cfg: RunConfig, inputs: Inputs, records: list[StepRecord], rows: dict) -> dict:
    """5, for a token-classification task: the same rows and keys as :func:`score`, in its metric.
    Each ``accuracy_*`` key holds entity-level micro F1 of the words' tags on the eval sentences
    (exact spans, strict IOB2; ``metric_name`` "entity_f1"), ``precision_onnx`` and
    ``recall_onnx`` beside it; ``accuracy_interval`` is a percentile bootstrap interval of F1 over
    the sentences, ``versus_paired`` the paired bootstrap of the difference in points (x100; no
    discordant counts). The trivial baseline, tagging every word O, scores 0, so ``gap_closed``
    is ``F1 / F1_dense`` and a collapse is F1 at most 0.01."""
    from compressor.metrics import TOKEN_METRIC, f1_from_counts
    from compressor.onnx_utils import onnx_tagging_counts
    from compressor.stats import f1_interval, paired_bootstrap_f1
    data, models, counts = inputs.data, {}, {}
    for label, (tm, om) in rows.items():
        log.info("evaluating %s on %d eval sentences", label, len(data.eval))
        counts[label] = onnx_tagging_counts(om, data.eval, max_length=cfg.max_length)
        scores = f1_from_counts(*counts[label].sum(0).tolist())
        models[label] = _row(cfg, data, tm, om, metric_name=TOKEN_METRIC, accuracy_onnx=scores[TOKEN_METRIC],
                             precision_onnx=scores["precision"], recall_onnx=scores["recall"],
                             accuracy_interval=list(f1_interval(counts[label], seed=cfg.seed)))
    comp = _rows_done(models, records, trivial=0.0)
    _versus(comp, counts, lambda a, b: paired_bootstrap_f1(a, b, seed=cfg.seed), " of entity F1")
    return models


def score_multi_label(cfg: RunConfig, inputs: Inputs, records: list[StepRecord], rows: dict) -> dict:
    """5, for a multi-label task: the same rows and keys as :func:`score`, in its metric. Each row's
    one global ``threshold`` on its sigmoid outputs is chosen on the dev split
    (:func:`compressor.metrics.choose_threshold`, from that row's own ONNX model) and applied on
    eval, never chosen there. Each ``accuracy_*`` key holds micro F1 of the (row, label) decisions on
    the eval split (``metric_name`` "micro_f1"), ``macro_f1_onnx``, ``precision_onnx`` and
    ``recall_onnx`` beside it; ``accuracy_interval`` is a percentile bootstrap interval of micro F1
    over the eval rows (per-row true positives, predicted and gold labels resampled and summed),
    ``versus_paired`` the paired bootstrap of the difference in points (x100; no discordant
    counts). The trivial baseline, predicting no label, scores 0, so ``gap_closed`` is
    ``F1 / F1_dense`` and a collapse is micro F1 at most 0.01."""
    import numpy as np

    from compressor.metrics import (DEFAULT_THRESHOLD, MULTI_LABEL_METRIC, choose_threshold, multi_label_counts,
                                    multi_label_scores)
    from compressor.onnx_utils import onnx_probabilities
    from compressor.stats import f1_interval, paired_bootstrap_f1
    data, models, counts = inputs.data, {}, {}
    gold, dev_gold = [e.label for e in data.eval], [e.label for e in data.dev]
    for label, (tm, om) in rows.items():
        threshold = (choose_threshold(onnx_probabilities(om, data.dev, max_length=cfg.max_length), dev_gold)
                     if data.dev else DEFAULT_THRESHOLD)
        log.info("evaluating %s on %d eval examples at threshold %.2f (chosen on %d dev rows)", label,
                 len(data.eval), threshold, len(data.dev))
        probs = onnx_probabilities(om, data.eval, max_length=cfg.max_length)
        counts[label] = np.asarray(multi_label_counts(probs, gold, threshold), dtype=np.int64).reshape(-1, 3)
        scores = multi_label_scores(probs, gold, threshold)
        models[label] = _row(cfg, data, tm, om, metric_name=MULTI_LABEL_METRIC, threshold=threshold,
                             accuracy_onnx=scores[MULTI_LABEL_METRIC], macro_f1_onnx=scores["macro_f1"],
                             precision_onnx=scores["precision"], recall_onnx=scores["recall"],
                             accuracy_interval=list(f1_interval(counts[label], seed=cfg.seed)))
    comp = _rows_done(models, records, trivial=0.0)
    _versus(comp, counts, lambda a, b: paired_bootstrap_f1(a, b, seed=cfg.seed), " of micro F1")
    return models


def score_question_answering(cfg: RunConfig, inputs: Inputs, records: list[StepRecord], rows: dict) -> dict:
    """5, for a question-answering task: the same rows and keys as :func:`score`, in its metric.
    Each ``accuracy_*`` key holds SQuAD F1 over the eval questions (``metric_name`` "squad_f1"),
    ``exact_match_onnx`` exact match beside it; ``accuracy_interval`` is a percentile bootstrap
    interval of F1 over the questions, ``versus_paired`` the paired bootstrap of the per-question
    F1 difference in points (no discordant counts). The trivial baseline, always answering "",
    scores the share of questions without an answer (0 on SQuAD v1.1)."""
    from compressor.metrics import QA_METRIC, majority_accuracy
    from compressor.onnx_utils import onnx_qa_scores
    from compressor.stats import mean_interval, paired_bootstrap
    data, models, f1s = inputs.data, {}, {}
    for label, (tm, om) in rows.items():
        log.info("evaluating %s on %d eval questions", label, len(data.eval))
        em, f1s[label] = onnx_qa_scores(om, data.eval, max_length=cfg.max_length)
        models[label] = _row(cfg, data, tm, om, metric_name=QA_METRIC, accuracy_onnx=float(f1s[label].mean()),
                             exact_match_onnx=float(em.mean()),
                             accuracy_interval=list(mean_interval(f1s[label], seed=cfg.seed)))
    comp = _rows_done(models, records, trivial=majority_accuracy(data.eval))
    _versus(comp, f1s, lambda a, b: paired_bootstrap(a, b, seed=cfg.seed), " of SQuAD F1")
    return models


PROBE_TRAIN = 2000
"""Training texts (a seeded sample) the linear probe of :func:`score_embeddings` is fit on."""


def score_embeddings(cfg: RunConfig, inputs: Inputs, records: list[StepRecord], rows: dict) -> dict:
    """5, for an embedding task: the same rows and keys as :func:`score`, in its metric. Each
    ``accuracy_*`` key holds the **fidelity**, the mean cosine of the row's sentence embedding to
    the dense PyTorch model's on the eval texts (``metric_name`` "fidelity"; the trivial level is
    one constant vector for every text), with a bootstrap interval over the texts, and
    ``versus_paired`` the paired bootstrap of the difference in points (x100). ``embedding``
    holds the quality a user of the embeddings sees, each with its interval and in % of dense:
    ``neighbours`` (overlap of each eval text's top-10 cosine neighbours among the eval texts with
    the dense model's) and, when the texts have class labels, ``probe`` (accuracy of a logistic
    regression fit on :data:`PROBE_TRAIN` training texts' embeddings, scored on the eval texts:
    :func:`compressor.embedding_metrics.probe_accuracy`, one fit on the whole sample); with
    ``--sts``, ``sts`` (Spearman of pair cosines against the gold scores; its intervals resample the
    pairs with ranks taken on the whole sample) and with ``--retrieval``, ``ndcg`` and ``recall``
    (@10, per query). Paired differences to dense INT8 and dense are in ``versus_paired_embedding``."""
    import numpy as np

    from compressor.metrics import EMBEDDING_METRIC, trivial_fidelity
    from compressor.stats import paired_bootstrap, paired_bootstrap_pearson
    data, models, per_row = inputs.data, {}, {}
    dense = np.asarray([e.label for e in data.eval], dtype=np.float32)
    probe = _probe_sample(cfg, data)
    for label, (tm, om) in rows.items():
        log.info("evaluating %s on %d eval texts", label, len(data.eval))
        scores = _embedding_scores(cfg, inputs, om, dense, probe)
        per_row[label] = scores
        quality = _quality(cfg, scores)
        models[label] = _row(cfg, data, tm, om, metric_name=EMBEDDING_METRIC,
                             accuracy_onnx=quality["fidelity"]["value"],
                             accuracy_interval=quality["fidelity"]["interval"], embedding=quality)
    for m in models.values():
        for k, q in m["embedding"].items():
            base = models["dense"]["embedding"][k]["value"]
            q["percent_of_dense"] = 100 * q["value"] / base if base else None
    comp = _rows_done(models, records, trivial=trivial_fidelity(data.eval))
    comp["versus_paired_embedding"] = {}
    for ref in ("dense-int8", "dense"):
        if ref not in per_row:
            continue
        pairs = {}
        for k in per_row["compressed"]:
            if k == "sts":  # the same pairs resampled for both; ranks of the whole sample
                (a, gold), (b_, _) = _ranks(per_row["compressed"][k]), _ranks(per_row[ref][k])
                b = paired_bootstrap_pearson(a, b_, gold, seed=cfg.seed)
            else:
                b = paired_bootstrap(per_row["compressed"][k], per_row[ref][k], seed=cfg.seed)
            pairs[k] = {"points": 100 * b["diff"], "low": 100 * b["low"], "high": 100 * b["high"],
                        "n": b["n"], "level": b["level"]}
        comp["versus_paired"][ref] = pairs["fidelity"]
        comp["versus_paired_embedding"][ref] = pairs
        log.info("compressed - %s: fidelity %+.2f points (95%% %+.2f..%+.2f), top-10 neighbours %+.2f points",
                 ref, pairs["fidelity"]["points"], pairs["fidelity"]["low"], pairs["fidelity"]["high"],
                 pairs["neighbours"]["points"])
    return models


def _embedding_scores(cfg: RunConfig, inputs: Inputs, om, dense, probe, same_space: bool = True) -> dict:
    """One ONNX model's per-text scores on the eval texts: fidelity to ``dense`` (the dense
    model's embeddings; only ``same_space``), top-10 neighbours, the probe (``probe``:
    :func:`_probe_sample`) and the user's STS and retrieval sets."""
    from compressor.embedding_metrics import fidelity, neighbour_agreement, probe_accuracy
    from compressor.onnx_utils import onnx_logits
    found = onnx_logits(om, inputs.data.eval, max_length=cfg.max_length)
    scores = {"fidelity": fidelity(found, dense)} if same_space else {}
    scores["neighbours"] = neighbour_agreement(found, dense, k=10)
    if probe is not None:
        train_emb = onnx_logits(om, probe[0], max_length=cfg.max_length)
        scores["probe"] = probe_accuracy(train_emb, probe[1], found, probe[2], seed=cfg.seed, samples_per_label=None)
    scores.update(_user_evals(cfg, om, inputs.evals))
    return scores


def _probe_sample(cfg: RunConfig, data):
    """The linear probe's (training texts, their classes, the eval classes): a seeded sample of
    :data:`PROBE_TRAIN` of the task's own training texts (first in train; ``--unlabeled`` texts
    follow and have no class), or None without class labels or scikit-learn."""
    labels = data.info.get("probe_labels") or {}
    if not (labels.get("train") and labels.get("eval") and _has_sklearn()):
        return None
    import random
    n = len(labels["train"])
    pick = sorted(random.Random(cfg.seed).sample(range(n), min(PROBE_TRAIN, n)))
    return [data.train[i] for i in pick], [labels["train"][i] for i in pick], labels["eval"]


def _quality(cfg: RunConfig, scores: dict) -> dict:
    """Per-text (per-pair for ``sts``) scores as ``{measure: {"value", "interval"}}``: Wilson for
    the probe, a bootstrap of the mean otherwise, Spearman with an interval over pairs for STS."""
    from compressor.metrics import spearman
    from compressor.stats import mean_interval, pearson_interval, wilson
    quality = {k: {"value": float(v.mean()), "interval": list(
        wilson(int(v.sum()), v.size) if k == "probe" else mean_interval(v, seed=cfg.seed))}
        for k, v in scores.items() if k != "sts"}
    if "sts" in scores:
        quality["sts"] = {"value": spearman(*scores["sts"]), "interval": list(
            pearson_interval(*_ranks(scores["sts"]), seed=cfg.seed))}
    return quality


def score_static(cfg: RunConfig, inputs: Inputs, models: dict) -> dict:
    """5b. ``--static-baseline``: the model2vec model exported to ONNX (``out/static-model2vec/``,
    checked against model2vec's encode: :mod:`compressor.static_baseline`) and scored as a row of
    ``models`` (:data:`compressor.static_baseline.LABEL`) with the measures that apply to another
    embedding space: top-10 neighbours (its own neighbours among the eval texts against the dense
    model's), the probe, STS and retrieval, each in % of dense. Fidelity needs the dense model's
    space: its ``accuracy`` keys are None. Returns ``{label: OnnxModel}`` to profile beside the
    other rows, ``{}`` without the flag."""
    if inputs.static is None:
        return {}
    import numpy as np

    from compressor.metrics import EMBEDDING_METRIC
    from compressor.static_baseline import FOLDER, LABEL, export_static
    data = inputs.data
    om = export_static(inputs.static, inputs.ctx.workdir / FOLDER, [e.text for e in data.eval], cfg.max_length)
    log.info("evaluating %s on %d eval texts", LABEL, len(data.eval))
    dense = np.asarray([e.label for e in data.eval], dtype=np.float32)
    quality = _quality(cfg, _embedding_scores(cfg, inputs, om, dense, _probe_sample(cfg, data), same_space=False))
    for k, q in quality.items():
        base = models["dense"]["embedding"][k]["value"]
        q["percent_of_dense"] = 100 * q["value"] / base if base else None
    models[LABEL] = {**_row(cfg, data, None, om, metric_name=EMBEDDING_METRIC, accuracy_onnx=None,
                            accuracy_interval=None, embedding=quality),
                     "method": "model2vec", "sparsity": None, "gap_closed": None, "collapse": False,
                     "static_baseline": {"source": str(inputs.static.folder), "dimensions": inputs.static.dim,
                                         "normalize": inputs.static.normalize, **om.info}}
    return {LABEL: om}


def _user_evals(cfg: RunConfig, om, evals: dict) -> dict:
    """The ``--sts`` and ``--retrieval`` scores of one ONNX model: ``sts`` as (pair cosines, gold
    scores), ``ndcg`` and ``recall`` (@10) per query with a relevant document."""
    from compressor.data import Example
    from compressor.embedding_metrics import retrieval_scores, sts_scores
    from compressor.onnx_utils import onnx_logits

    def embed(texts):
        return onnx_logits(om, [Example(t, 0) for t in texts], max_length=cfg.max_length)
    out = {}
    if "sts" in evals:
        pairs = evals["sts"]
        out["sts"] = (sts_scores(embed([a for a, _, _ in pairs]), embed([b for _, b, _ in pairs])).tolist(),
                      [g for _, _, g in pairs])
    if "retrieval" in evals:
        queries, corpus, qrels = evals["retrieval"]
        qids, cids = list(queries), list(corpus)
        r = retrieval_scores(embed([queries[q] for q in qids]), embed([corpus[c] for c in cids]), qrels, qids, cids, k=10)
        out["ndcg"], out["recall"] = r["ndcg"], r["recall"]
    return out


def _ranks(pair) -> tuple[list, list]:
    """(ranks of the predictions, ranks of the gold scores): Spearman's rho is Pearson's r of them."""
    from compressor.metrics import average_ranks
    return average_ranks(pair[0]), average_ranks(pair[1])


def _has_sklearn() -> bool:
    import importlib.util
    if importlib.util.find_spec("sklearn") is None:
        log.warning("no linear probe of the embeddings: it needs scikit-learn (pip install 'compressor[embeddings]')")
        return False
    return True


def _row(cfg: RunConfig, data, tm, om, **metric) -> dict:
    """One row of :func:`score`: its task metric (``metric``, e.g. ``accuracy_onnx``), the torch
    model's metric, path, size, parameters and the size split (a multi-label row's torch metric at
    its ``threshold``, chosen on dev)."""
    from compressor.evaluation import evaluate
    from compressor.models import count_parameters
    from compressor.size_breakdown import size_breakdown
    head = {"metric_name": metric.pop("metric_name")} if "metric_name" in metric else {}
    at = {"threshold": metric["threshold"]} if "threshold" in metric else {}
    return {**head, "accuracy_torch": evaluate(tm.model, tm.tokenizer, data.eval, cfg.max_length, **at) if tm else None,
        **metric,
        "onnx_path": str(om.path), "size_bytes": om.size_bytes(),
        "params": count_parameters(tm.model) if tm else None, "int8": bool(om.info.get("quantized")),
        "size_split": {k: v for k, v in size_breakdown(om.path).items() if k.endswith("_bytes")}}


def _rows_done(models: dict, records: list[StepRecord], trivial: float) -> dict:
    """What every row of :func:`score` gets once all are scored: the compressed rows' sparsity and
    size before sparse initializers, each row's gap closed between the ``trivial`` score (the
    majority class; the train mean for regression, r = 0) and dense, and whether it collapsed
    there. Returns the compressed row (its ``versus_paired`` emptied, for the caller to fill)."""
    from compressor.metrics import gap_closed, is_collapse
    comp = models["compressed"]
    comp["size_bytes_before_sparse_init"] = _first_metric(records, "export", "size_bytes") or comp["size_bytes"]
    for label in ("compressed", "compressed-fp32", "compressed-int8"):  # one model, two precisions
        if label in models:
            models[label]["sparsity"] = _last_metric(records, "sparsity")
    dense = models["dense"]["accuracy_onnx"]
    for m in models.values():
        m["gap_closed"] = gap_closed(m["accuracy_onnx"], dense, trivial)
        m["collapse"] = is_collapse(m["accuracy_onnx"], trivial)
    comp["versus_paired"] = {}
    return comp


def profile(cfg: RunConfig, plan: Plan, inputs: Inputs, dense_torch, onnx_models: dict, models: dict) -> dict:
    """6. Profile the ONNX models side by side on every target (fixed shapes and real eval-text
    batches) and measure each one's accuracy there (added to ``models``)."""
    from compressor.profiling import profile_targets
    grid = profile_targets(
        plan.targets, {label: om.path for label, om in onnx_models.items()},
        examples=inputs.data.eval, tokenizer=dense_torch.tokenizer, batch_sizes=cfg.batch_sizes,
        seq_lens=cfg.seq_lens, runs=cfg.runs, min_seconds=cfg.min_seconds, max_length=cfg.max_length,
        real_shapes=cfg.real_shapes, seed=cfg.seed,
        known_accuracy={k: m["accuracy_onnx"] for k, m in models.items()},
        thresholds={k: m["threshold"] for k, m in models.items() if "threshold" in m},
        skip_accuracy={k for k, m in models.items() if "static_baseline" in m})
    for label, by_target in grid["accuracy"].items():
        models[label]["accuracy_by_target"] = by_target
    return grid


def report(cfg: RunConfig, plan: Plan, inputs: Inputs, records: list[StepRecord], models: dict,
           grid: dict) -> dict:
    """7. The report (json, md, html), its gates, and MLflow when asked."""
    from compressor.gates import check_gates
    from compressor.report import build_summary, machine_info, write_report
    data, piped = inputs.data, cfg.pipeline is not None
    budget = inputs.ctx.state.get("max_drop_search")  # --max-drop: the candidates and the choice
    unlabeled = data.info.get("unlabeled") or {}  # --unlabeled: file, texts used, dropped
    if budget:  # the chosen speedup is what the deployment was searched for: report and gate it so
        cfg = dataclasses.replace(cfg, speedup=budget["chosen_speedup"], max_drop=0.0)
    doc = {
        "schema_version": 1,
        "tool": {"name": "compressor", "version": __version__},
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine_info(),
        "run": {"model": cfg.model, "model_path": inputs.pretrained.info.get("path"),
                # --pipeline: no --method ran, its sparsity/granularity options do not apply
                "method": None if piped else cfg.method,
                # --speedup: the searched structure sets the sparsity (the compressed rows carry it)
                "sparsity": None if piped or cfg.speedup else cfg.sparsity,
                "granularity": None if piped else cfg.granularity,
                "task": data.name, "pipeline": ",".join(r.spec for r in records), "seed": cfg.seed,
                "command": cfg.command or "", "targets": list(cfg.targets),
                **_speedup_request(cfg, records, models), **({"max_drop": budget} if budget else {})},
        "data": {"task": data.name, "train_size": len(data.train) - unlabeled.get("texts", 0),
                 "eval_size": len(data.eval), "dev_size": len(getattr(data, "dev", None) or []),
                 "num_labels": data.num_labels, "label_names": data.label_names,
                 "majority_accuracy": _majority(data.eval), **_task_keys(data),
                 **({"unlabeled": unlabeled} if unlabeled else {})},  # --unlabeled: trained on beside train_size
        "steps": [r.to_dict() for r in records],
        "models": models,
        "profiles": grid["profiles"],
        "profile_grid": grid["grid"],
    }
    doc["summary"] = build_summary(models, grid["profiles"])
    gates = dict(cfg.gates, **({"speedup_asked": float(cfg.speedup)} if cfg.speedup else {}))
    doc["gates"] = check_gates(doc, gates)
    write_report(plan.out, doc)
    if cfg.mlflow_uri is not None:  # adds doc["mlflow"] (the run id) and rewrites the report
        from compressor.tracking import log_run
        log_run(doc, plan.out, cfg.mlflow_uri, cfg.mlflow_experiment)
    return doc


def _parts(cfg: RunConfig, speedup: float) -> list[Pipeline]:
    """The three pipeline parts of ``--speedup speedup`` with these settings (a --max-drop candidate)."""
    return list(_split(Pipeline(method_spec(dataclasses.replace(cfg, speedup=speedup, max_drop=0.0)))))


def _split(pipeline: Pipeline) -> tuple[Pipeline, Pipeline, Pipeline]:
    """Split into the torch part (ending at the last torch->torch pass), the ONNX part up to the
    first pass that ``starts_deployment`` (quantize) and the deployment part from it on (empty
    without one)."""
    pipeline.check("torch")
    cut = 0
    for i, p in enumerate(pipeline.passes):
        if p.produces == "torch":
            cut = i + 1
    rest = pipeline.passes[cut:]
    if not rest or rest[-1].produces != "onnx":
        raise ConfigError(f"pipeline '{pipeline.spec}' must end with an ONNX model: add 'export'")
    q = next((i for i, p in enumerate(rest) if p.starts_deployment), len(rest))
    return Pipeline(pipeline.passes[:cut]), Pipeline(rest[:q]), Pipeline(rest[q:])


def _speedup_request(cfg: RunConfig, records: list[StepRecord], models: dict) -> dict:
    """``--speedup``: what was asked, what the latency table predicted, at which shape and over which
    dense row it is measured (the gate ``speedup_asked`` reads these)."""
    if not cfg.speedup:
        return {}
    reference = "dense-int8" if models.get("compressed", {}).get("int8") else "dense"
    return {"speedup_asked": float(cfg.speedup), "speedup_predicted": _last_metric(records, "predicted_speedup"),
            "speedup_reference": reference,
            "speedup_shape": f"{cfg.targets[0]} b1x{'real' if cfg.real_shapes else f's{max(cfg.seq_lens)}'}"}


def _dev_size(value: float):
    """``--dev-size``: 0 -> the default (None), a whole number -> rows, else a fraction."""
    if not value:
        return None
    return int(value) if float(value) >= 1 else float(value)


def _task_keys(data) -> dict:
    """A regression, embedding, token-classification or multi-label task's ``data`` keys: ``task_type``
    and ``metric_name`` (what every ``accuracy`` key of the report holds: Pearson's r, the fidelity of
    the embeddings, entity F1 or micro F1; a tagger's ``tag_scheme`` as read, converted to IOB2). A
    classification report is unchanged."""
    from compressor.metrics import EMBEDDING_METRIC, MULTI_LABEL_METRIC, QA_METRIC, REGRESSION_METRIC, TOKEN_METRIC
    if data.question_answering:
        return {"task_type": data.task_type, "metric_name": QA_METRIC, "squad_version": data.info.get("squad_version"),
                "doc_stride": data.info.get("doc_stride")}
    if data.multi_label:
        return {"task_type": data.task_type, "metric_name": MULTI_LABEL_METRIC}
    if getattr(data, "tagging", False):
        return {"task_type": data.task_type, "metric_name": TOKEN_METRIC, "tag_scheme": data.info.get("tag_scheme")}
    if getattr(data, "embeddings", False):
        return {"task_type": data.task_type, "metric_name": EMBEDDING_METRIC,
                "embedding_dimension": data.info.get("embedding_dimension"),
                "embedding_settings": data.info.get("embedding_settings")}
    if not getattr(data, "regression", False):
        return {}
    return {"task_type": data.task_type, "metric_name": REGRESSION_METRIC}


def _majority(examples) -> float | None:
    from compressor.metrics import majority_accuracy
    return majority_accuracy(examples) if examples else None


def _first_metric(records: list[StepRecord], step: str, key: str):
    return next((r.metrics.get(key) for r in records if r.name == step), None)


def _last_metric(records: list[StepRecord], key: str):
    return next((r.metrics[key] for r in reversed(records) if key in r.metrics), None)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in ["compress", *sys.argv[1:]])


__all__ = ["run", "check_plan", "check_config", "method_spec"]
