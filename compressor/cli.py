"""The `compress` command line: a thin shell over the Python API.

Exit codes: 0 success; 1 a failed step; 2 bad input (one line, nothing written); 3 a quality
gate failed or the deployment collapsed to the majority class (every artifact and the report are
in place); 4 a training pass collapsed to the majority class on dev (stopped there). ``--allow-collapse``
turns both collapses into exit 0. ``--json`` on run, profile and report
prints one JSON document on stdout; logs and progress go to stderr.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys

import click

from compressor.config import MIN_SECONDS
from compressor.errors import CompressorError, OutputError, StepFailed
from compressor.gates import GatesFailed, raise_if_failed
from compressor.registry import METHODS
from compressor.run_settings import cli_options as recipe_cli_options

_min_seconds_option = click.option(
    "--min-seconds", default=MIN_SECONDS, show_default=True, type=float,
    help="A fast shape gets more timed runs (up to 20x --runs) until they fill about this long.")


def _ints(ctx, param, value):
    if value is None:
        return None
    try:
        out = tuple(int(v) for v in str(value).split(",") if v.strip())
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers, e.g. 1,8,32")
    if not out or min(out) < 1:
        raise click.BadParameter(f"{value!r}: each value must be an integer >= 1")
    return out


def _int_or_auto(ctx, param, value):
    """An integer, or ``auto``; any other text goes on as it is (the settings' check names it)."""
    text = str(value).strip()
    return "auto" if text.lower() == "auto" else int(text) if text.lstrip("-").isdigit() else text


def _echo_json(data) -> None:
    """One JSON document on stdout (non-finite numbers as null)."""
    from compressor.report import _jsonable
    click.echo(json.dumps(_jsonable(data), indent=2))


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for h in list(getattr(logger, "handlers", ())):  # an earlier call's handler whose stream is gone
            if isinstance(h, logging.StreamHandler) and getattr(h.stream, "closed", False):
                logger.removeHandler(h)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    # hub retry warnings are noise: the one error line of a failed load says it all
    for noisy, floor in (("urllib3", logging.ERROR), ("huggingface_hub", logging.ERROR),
                         ("filelock", logging.WARNING), ("accelerate", logging.WARNING),
                         ("torch", logging.WARNING)):
        logging.getLogger(noisy).setLevel(floor)


def _gate_options(f):
    """The quality-gate flags (see compressor.gates), shared by `run` and `gate`."""
    for flag, hlp in reversed([
            ("--min-retention", "Gate: compressed/dense ONNX accuracy must be >= this."),
            ("--min-speedup", "Gate: dense/compressed p50 must be >= this at every profiled shape."),
            ("--max-latency-ms", "Gate: compressed p50 at batch 1 must be <= this (ms)."),
            ("--max-size-mb", "Gate: compressed ONNX file must be <= this (MB, 1e6 bytes).")]):
        f = click.option(flag, type=float, default=None, help=hlp + " Exit 3 when missed.")(f)
    return f


def _gates(min_retention, min_speedup, max_latency_ms, max_size_mb) -> dict:
    return {k: v for k, v in (("min_retention", min_retention), ("min_speedup", min_speedup),
                              ("max_latency_ms", max_latency_ms), ("max_size_mb", max_size_mb))
            if v is not None}


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compressor")
def cli():
    """Compress BERT-family models into small, fast, verified ONNX deployments."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@cli.command()
@click.argument("model", required=False)
@click.option("--method", default="magnitude", show_default=True, metavar="[" + "|".join(sorted(METHODS)) + "]",
              help="Compression method (the registry's methods; `compress passes` shows their options).")
@click.option("--sparsity", default=0.9, show_default=True, type=float,
              help="Target sparsity in [0, 1).")
@click.option("--granularity", default="weight", show_default=True,
              type=click.Choice(["weight", "structured"]), help="Single weights or heads/neurons.")
@click.option("--task", default="rotten-tomatoes", show_default=True,
              help="Built-in task, glue/<name>, or a hub tagging/QA task (wnut_17, conll2003, squad, "
                   "squad_v2; needs HF datasets and the hub); ignored with --train/--eval.")
@click.option("--train", "train_file", type=click.Path(), help="Local train file (TSV/CSV/JSONL).")
@click.option("--eval", "eval_file", type=click.Path(), help="Local eval file (TSV/CSV/JSONL).")
@click.option("--teacher", help="Fine-tuned dense model (folder or hub id); skips fine-tuning.")
@click.option("--pipeline", "pipeline_spec", help="Explicit pass spec, e.g. "
              "'finetune,magnitude{sparsity=0.9},export,sparse-init'; overrides --method.")
@click.option("--target", "targets", multiple=True, default=("cpu",), show_default=True,
              help="Target to profile on (repeatable).")
@click.option("-o", "--output", default="out", show_default=True, type=click.Path(),
              help="Output folder.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--epochs", default=0, show_default=True, type=int,
              help="Training epochs for each training pass (0 = the pass defaults).")
@click.option("--max-train", default=0, show_default=True, type=int,
              help="Use at most N train examples (0 = all).")
@click.option("--max-eval", default=0, show_default=True, type=int,
              help="Use at most N eval examples (0 = all).")
@click.option("--max-length", default=64, show_default=True, type=int, help="Token limit.")
@click.option("--dev-size", default=0.0, show_default=True, type=float,
              help="Dev split carved from the training data for every selection (epochs, settings): "
              "rows (>= 1) or a fraction (< 1); 0 = 20% of train, at most 2000 rows. The eval split "
              "is only measured.")
@click.option("--columns", default=None, metavar="SPEC",
              help="Columns of headerless --train/--eval files, e.g. text=0,label=1 or "
              "sentence1=1,sentence2=2,label=0; several 0/1 label columns (multi-label): text=0,labels=2:7 "
              "(columns 2 to 7, both included) or, with a header row, text=text,labels=toxic+insult.")
@click.option("--task-type", type=click.Choice(["classification", "regression", "embeddings", "token-classification",
                                               "multi-label", "question-answering"]),
              default=None,
              help="What the labels are: classes, or float scores (one output, MSE, reported in Pearson "
              "and Spearman). Default: detected (numbers that are not all whole numbers are scores). "
              "embeddings: compress MODEL as a sentence-embedding model (no fine-tuning: it distils to "
              "its own dense embeddings of the task's texts; class labels, if any, feed a linear probe). "
              "token-classification: an NER tagger from CoNLL-style files (token ... tag per line; .conll/.txt/.iob, "
              "detected) or JSONL tokens/tags, IOB1/IOB2/BIOES, reported in entity-level F1. "
              "multi-label: any number of labels a text (JSONL label lists, detected; a TSV/CSV cell a,b or a|b; "
              "or 0/1 columns, --columns labels=I:J), sigmoid outputs, micro F1 at a threshold chosen on dev. "
              "question-answering: extractive QA from SQuAD v1.1/v2.0 JSON or JSONL question/context/answers "
              "(detected), long contexts in windows (--doc-stride), reported in SQuAD F1 and exact match.")
@click.option("--doc-stride", type=int, default=None,
              help="Question answering: tokens two windows of a long context share (below --max-length; "
              "0: every context must fit one window). Default: 128, at most half of --max-length.")
@click.option("--pooling", type=click.Choice(["mean", "cls", "max"]), default=None,
              help="Embeddings: how token embeddings become a sentence embedding (default: the "
              "sentence-transformers folder's, else mean).")
@click.option("--normalize/--no-normalize", default=None,
              help="Embeddings: L2-normalize the sentence embedding (default: the folder's, else yes).")
@click.option("--contrastive", type=float, default=None,
              help="Embeddings: weight of an in-batch contrastive (InfoNCE, temperature 0.05) term beside "
              "1 - cos(student, teacher) in every distillation loss (default 0).")
@click.option("--sts", "sts_file", type=click.Path(), default=None,
              help="Embeddings: sentence pairs with gold scores (TSV/CSV/JSONL: sentence1, sentence2, score), "
              "reported as the Spearman of cosines, in % of dense.")
@click.option("--retrieval", "retrieval_dir", type=click.Path(), default=None,
              help="Embeddings: a BEIR folder (corpus.jsonl, queries.jsonl, qrels/test.tsv), reported as "
              "nDCG@10 and recall@10, in % of dense.")
@click.option("--unlabeled", "unlabeled_file", type=click.Path(dir_okay=False), default=None,
              help="Embeddings: more training texts (UTF-8, one per line), labelled with the teacher's "
              "embeddings for every pass that trains; texts also in dev/eval are left out.")
@click.option("--static-baseline", type=click.Path(file_okay=False), default=None,
              help="Embeddings: a model2vec folder (config.json, model.safetensors, tokenizer.json), "
              "exported to ONNX and reported and profiled as a baseline row.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_ints,
              help="Batch sizes to profile.")
@click.option("--seq-lens", default="32,128", show_default=True, callback=_ints,
              help="Sequence lengths to profile.")
@click.option("--runs", default=30, show_default=True, type=int, help="Timed runs per shape (at least).")
@_min_seconds_option
@click.option("--real-shapes/--no-real-shapes", default=True, show_default=True,
              help="Also profile batches of real eval texts padded to their longest.")
@click.option("--no-sparse-init", is_flag=True, help="Skip sparse initializers.")
@click.option("--quantize", type=click.Choice(["none", "dynamic", "static", "auto", "fused"]), default="dynamic",
              show_default=True, help="The deployment's precision: INT8 (dynamic, or static QDQ for "
              "TensorRT), fp32 (none), fused (ORT's transformer fusions, then dynamic INT8; --speedup "
              "times structures on that graph), or auto: the INT8 graph (dynamic, per-channel, "
              "fused+dynamic) measured fastest at b1 on the first target within 0.5 dev points of the most "
              "accurate (pass choose-deploy; with --max-drop fp32 is a choice too). The report shows the "
              "other precision and dense INT8 (one quantize_dynamic call, unfused) too.")
@click.option("--speedup", type=float, default=0.0, show_default=True,
              help="Search the structure for this measured speedup over the dense model (same precision) "
              "on the first --target, at batch 1 of real texts (--method fisher); the report shows "
              "asked vs predicted vs measured, and a miss by more than 10%% exits 3.")
@click.option("--max-drop", type=float, default=0.0, show_default=True,
              help="Accuracy points (on the dev split) the deployment may lose against the dense model: "
              "the run searches the fastest --speedup whose deployment stays within (--method fisher; "
              "every candidate tried is in the report; none within exits 3).")
@click.option("--vocab-prune", is_flag=True,
              help="Keep only the vocabulary the task's training texts (and --vocab-texts) use.")
@click.option("--vocab-texts", type=click.Path(dir_okay=False), default=None,
              help="Texts whose tokens must stay (one per line, or a CSV/TSV/JSONL text column).")
@click.option("--max-positions", type=int, default=0, show_default=True,
              help="Trim position embeddings to N (>= --max-length; longer inputs are refused).")
@click.option("--embed-int8", is_flag=True, help="Store the embedding tables in INT8 (a scale per row).")
@click.option("--hidden-width", default="0", show_default=True, callback=_int_or_auto,
              help="After the method, keep N hidden units (by Fisher importance; a multiple of 16, >= 64; "
              "pass hidden-prune); add --recover to distil the narrower model (0 = keep the width). "
              "auto (with --speedup or --max-drop): the search tries the full width, 5/6 and 2/3 of it "
              "and keeps the best on dev.")
@click.option("--recover", is_flag=True,
              help="After the method, distil the compressed model from the dense teacher (pass distill).")
@click.option("--recover-steps", type=int, default=0,
              help="With --recover: at least N optimizer steps of recovery (more epochs on a small task; "
              "default 500, as the teacher's fine-tuning).")
@click.option("--allow-fallback", is_flag=True,
              help="Profile what really ran when the asked provider is unavailable.")
@click.option("--allow-collapse", is_flag=True,
              help="A collapse to the majority class is not an error: a training pass whose dev metric "
              "collapses trains on (else it stops, exit 4) and a collapsed deployment exits 0 (else 3).")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, warnings only.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@_gate_options
@click.option("--mlflow-uri", help="Log the run to this MLflow tracking URI, e.g. sqlite:///mlflow.db "
              "(needs pip install 'compressor[mlflow]').")
@click.option("--mlflow-experiment", default="compressor", show_default=True)
@click.option("--json", "as_json", is_flag=True,
              help="Print report.json on stdout (one JSON document); logs go to stderr.")
@recipe_cli_options
def run(model, method, sparsity, granularity, task, train_file, eval_file, teacher, pipeline_spec,
        targets, output, seed, epochs, max_train, max_eval, max_length, dev_size, columns, task_type,
        doc_stride, pooling, normalize, contrastive, sts_file, retrieval_dir, unlabeled_file, static_baseline, batch_sizes, seq_lens, runs, min_seconds, no_sparse_init, quantize, speedup, max_drop, vocab_prune, vocab_texts,
        max_positions, embed_int8, hidden_width, recover, recover_steps, allow_fallback, allow_collapse, quiet,
        verbose, min_retention, min_speedup, max_latency_ms, max_size_mb, mlflow_uri,
        mlflow_experiment, as_json, real_shapes, **recipe_opts):
    """Compress MODEL (a local folder, a hub id, or an alias: bert-base, minilm).

    With --recipe FILE the settings come from a YAML recipe (flags given here override it);
    every run writes its own recipe.yaml into the output folder."""
    from compressor.config import RunConfig
    from compressor.run import command_line, run as run_job
    _setup_logging(quiet, verbose)
    cfg = RunConfig(model=model, method=method, sparsity=sparsity, granularity=granularity,
                    task=task, train_file=train_file, eval_file=eval_file, teacher=teacher,
                    pipeline=pipeline_spec, targets=tuple(targets), output=output, seed=seed,
                    max_train=max_train, max_eval=max_eval, max_length=max_length, epochs=epochs,
                    dev_size=dev_size, columns=columns, task_type=task_type, doc_stride=doc_stride, pooling=pooling,
                    normalize=normalize, contrastive=contrastive, sts_file=sts_file, retrieval_dir=retrieval_dir,
                    unlabeled_file=unlabeled_file, static_baseline=static_baseline, batch_sizes=batch_sizes, seq_lens=seq_lens, runs=runs, min_seconds=min_seconds,
                    real_shapes=real_shapes,
                    sparse_init=not no_sparse_init, quantize=quantize, speedup=speedup, max_drop=max_drop,
                    recover=recover, recover_steps=recover_steps,
                    vocab_prune=vocab_prune, vocab_texts=vocab_texts, max_positions=max_positions,
                    embed_int8=embed_int8, hidden_width=hidden_width,
                    allow_fallback=allow_fallback, allow_collapse=allow_collapse,
                    progress=not quiet and sys.stderr.isatty(), command=command_line(),
                    gates=_gates(min_retention, min_speedup, max_latency_ms, max_size_mb),
                    mlflow_uri=mlflow_uri, mlflow_experiment=mlflow_experiment)
    from compressor.run_settings import apply_cli
    cfg = apply_cli(cfg, click.get_current_context(), **recipe_opts)  # recipe < explicit flags
    output = cfg.output
    from compressor.api import library_progress
    from compressor.report import load_report
    from compressor.report_md import render_markdown
    # With --json, stdout carries the JSON document only: anything printed goes to stderr.
    with library_progress(cfg.progress), \
            contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext():
        report = run_job(cfg)
    if report is None:  # a rank other than 0 under torchrun / accelerate launch: rank 0 reports
        return
    if as_json:
        _echo_json(load_report(output))
    else:
        click.echo(render_markdown(report))
    click.echo(f"report written to {os.path.join(output, 'report.md')}", err=as_json)
    collapsed = None if cfg.allow_collapse else _collapsed_deployment(report, output)
    if collapsed:
        click.echo(collapsed, err=True)
    raise_if_failed(report.get("gates"))  # exit 3, artifacts and report stay in place
    if collapsed:
        click.get_current_context().exit(3)


def _collapsed_deployment(report: dict, output: str) -> str | None:
    """The one line of a deployment that collapsed to the majority class on eval while the dense
    model is clearly above it (:func:`compressor.metrics.deployment_collapse`), or None."""
    from compressor.metrics import deployment_collapse
    models, data = report.get("models") or {}, report.get("data") or {}
    comp, dense = models.get("compressed") or {}, models.get("dense") or {}
    acc, dense_acc, majority = comp.get("accuracy_onnx"), dense.get("accuracy_onnx"), data.get("majority_accuracy")
    if not comp.get("collapse") or None in (acc, dense_acc, majority):
        return None
    metric = data.get("metric_name") or "accuracy"
    if deployment_collapse(acc, dense_acc, majority, int(data.get("eval_size") or 0), metric=metric) is None:
        return None
    what = {  # the collapse in the task's metric
        "micro_f1": f"predicting no label: eval micro F1 {100 * acc:.2f}% (dense {100 * dense_acc:.2f}%)",
        "squad_f1": f"answering \"\": eval SQuAD F1 {100 * acc:.2f}% vs {100 * majority:.2f}% for always \"\" "
                    f"(dense {100 * dense_acc:.2f}%)",
        "entity_f1": f"tagging every word O: eval entity F1 {100 * acc:.2f}% (dense {100 * dense_acc:.2f}%)",
        "pearson": f"a constant prediction: eval Pearson r {acc:.4f} (dense {dense_acc:.4f})",
    }.get(metric, f"the majority class: eval accuracy {100 * acc:.2f}% vs majority {100 * majority:.2f}% "
                  f"(dense {100 * dense_acc:.2f}%)")
    return (f"error: the deployment collapsed to {what}, not a result; artifacts and report kept in {output}. "
            f"Ask for less (a lower --sparsity, --speedup X or --max-drop D), or --allow-collapse to exit 0")


@cli.command()
def passes():
    """List every pass with its options and defaults."""
    from tabulate import tabulate

    from compressor.registry import PASSES, get_pass
    for name in sorted(PASSES):
        cls = get_pass(name)
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        click.echo(f"{name}  ({cls.consumes} -> {cls.produces})  {doc}")
        rows = [[o["name"], o["type"], o["default"], "|".join(map(str, o["choices"] or ())), o["help"]]
                for o in cls.options()]
        if rows:
            click.echo(tabulate(rows, headers=["option", "type", "default", "choices", "help"]))
        click.echo("")


@cli.command()
@click.argument("onnx_path", type=click.Path())
@click.option("--target", "target_name", default="cpu", show_default=True)
@click.option("--baseline", type=click.Path(), help="A second ONNX model timed side by side.")
@click.option("--batch-sizes", default="1,8,32", show_default=True, callback=_ints)
@click.option("--seq-lens", default="32,128", show_default=True, callback=_ints)
@click.option("--runs", default=30, show_default=True, type=int, help="Timed runs per shape (at least).")
@_min_seconds_option
@click.option("--warmup", default=5, show_default=True, type=int, help="Untimed runs first.")
@click.option("--threads", default=0, show_default=True, type=int, help="0 = all cores.")
@click.option("--allow-fallback", is_flag=True,
              help="Profile what really ran when the asked provider is unavailable.")
@click.option("--json", "as_json", is_flag=True,
              help="Print {target, profiles, speedup} as one JSON document on stdout.")
def profile(onnx_path, target_name, baseline, batch_sizes, seq_lens, runs, min_seconds, warmup, threads,
            allow_fallback, as_json):
    """Profile an ONNX model (file or folder) on a target."""
    from tabulate import tabulate

    from compressor.api import profile as profile_onnx
    from compressor.registry import get_target
    from compressor.report_md import fallback_text
    _setup_logging(True, False)
    get_target(target_name)(allow_fallback=allow_fallback).check_available()  # before any loading
    profiles = profile_onnx(onnx_path, target_name, baseline=baseline, batch_sizes=batch_sizes,
                            seq_lens=seq_lens, runs=runs, min_seconds=min_seconds, warmup=warmup,
                            threads=threads,
                            allow_fallback=allow_fallback)
    warning = fallback_text({"profiles": [p.to_dict() for p in profiles]})
    if warning:
        click.echo(warning.replace("**", ""), err=True)
    if as_json:
        from compressor.profiling import speedups
        _echo_json({"target": target_name, "profiles": [p.to_dict() for p in profiles],
                    "speedup": speedups(profiles, baseline="baseline").get(target_name, {}).get("model", {})})
        return
    rows = [[p.model, p.batch, p.seq_len, f"{p.p50_ms:.2f}", f"{p.p90_ms:.2f}", f"{p.p99_ms:.2f}",
             f"{p.throughput:.1f}", ",".join(p.providers_used) + (" (FALLBACK)" if p.fallback else "")]
            for p in profiles]
    click.echo(tabulate(rows, headers=["model", "batch", "seq", "p50 ms", "p90 ms", "p99 ms",
                                       "samples/s", "providers used"]))


@cli.command()
@click.argument("folder", type=click.Path())
@click.option("--format", "fmt", default="md", show_default=True,
              type=click.Choice(["md", "json", "html"]), help="html: one self-contained page.")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
def report(folder, fmt, as_json):
    """Print the report of a finished run folder."""
    from compressor.report import load_report
    from compressor.report_md import render_markdown
    data = load_report(folder)
    fmt = "json" if as_json else fmt
    if fmt == "html":
        from compressor.report_html import render_html
        click.echo(render_html(data), nl=False)
        return
    click.echo(json.dumps(data, indent=2) if fmt == "json" else render_markdown(data))


@cli.command()
@click.argument("folders", nargs=-1, required=True, type=click.Path())
@click.option("--format", "fmt", default="md", show_default=True, type=click.Choice(["md", "html"]),
              help="md: a table on stdout; html: one self-contained page with plots.")
def compare(folders, fmt):
    """Put finished runs (their output folders) side by side."""
    from compressor.compare import load_runs, render_compare_html, render_compare_markdown
    runs = load_runs(folders)
    click.echo(render_compare_html(runs) if fmt == "html" else render_compare_markdown(runs), nl=fmt == "md")


@cli.command()
@click.argument("folder", type=click.Path())
@_gate_options
@click.option("--json", "as_json", is_flag=True, help="Print the gate results as JSON.")
def gate(folder, min_retention, min_speedup, max_latency_ms, max_size_mb, as_json):
    """Check quality gates on the report of a finished run (exit 3 when one fails)."""
    from compressor.gates import check_gates
    from compressor.report import load_report
    gates = _gates(min_retention, min_speedup, max_latency_ms, max_size_mb)
    if not gates:
        raise click.UsageError("give at least one gate, e.g. --min-retention 0.98")
    results = check_gates(load_report(folder), gates)
    if as_json:
        _echo_json({"passed": all(r["passed"] for r in results), "gates": results})
    else:
        for r in results:
            click.echo(f"{'PASS' if r['passed'] else 'FAIL'}  {r['name']}: {r['reason']}")
    raise_if_failed(results)


def main(argv=None) -> int:
    """Entry point: runs the CLI and maps errors to exit codes without tracebacks."""
    try:
        code = cli.main(args=argv, prog_name="compress", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return 2
    except CompressorError as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except StepFailed as exc:
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except GatesFailed as exc:  # exit 3: every artifact is in place, the report marks the gates
        click.echo(f"error: {exc}", err=True)
        return exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    except OSError as exc:  # disk full, read-only or forbidden output: one line, exit 2
        err = OutputError.from_os_error(exc)
        if err is None:
            raise
        click.echo(f"error: {err}", err=True)
        return err.exit_code
    return code if isinstance(code, int) else 0  # a command's ctx.exit(n), e.g. 3 for a collapse


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
