"""The `compress` command line: a thin shell over the Python API.

User errors print one line and exit with code 2; a failed step exits with 1.
"""

from __future__ import annotations

import logging
import os
import sys

import click

from compressor.errors import CompressorError, StepFailed


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


def _setup_logging(quiet: bool, verbose: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for noisy in ("urllib3", "filelock", "huggingface_hub", "accelerate", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="compressor")
def cli():
    """Compress BERT-family models into small, fast, verified ONNX deployments."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@cli.command()
@click.argument("model")
@click.option("--method", default="magnitude", show_default=True,
              help="Compression method: magnitude (cap, sparsebert, rpp, nip arrive later).")
@click.option("--sparsity", default=0.9, show_default=True, type=float,
              help="Target sparsity in [0, 1).")
@click.option("--granularity", default="weight", show_default=True,
              type=click.Choice(["weight", "structured"]), help="Single weights or heads/neurons.")
@click.option("--task", default="rotten-tomatoes", show_default=True,
              help="Built-in task or glue/<name>; ignored with --train/--eval.")
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
@click.option("--batch-sizes", default="1,8", show_default=True, callback=_ints,
              help="Batch sizes to profile.")
@click.option("--seq-lens", default="128", show_default=True, callback=_ints,
              help="Sequence lengths to profile.")
@click.option("--runs", default=30, show_default=True, type=int, help="Timed runs per shape.")
@click.option("--no-sparse-init", is_flag=True, help="Skip sparse initializers.")
@click.option("--allow-fallback", is_flag=True,
              help="Profile what really ran when the asked provider is unavailable.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars, warnings only.")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def run(model, method, sparsity, granularity, task, train_file, eval_file, teacher, pipeline_spec,
        targets, output, seed, epochs, max_train, max_eval, max_length, batch_sizes, seq_lens,
        runs, no_sparse_init, allow_fallback, quiet, verbose):
    """Compress MODEL (a local folder, a hub id, or an alias: bert-base, minilm)."""
    from compressor.run import RunConfig, command_line, run as run_job
    _setup_logging(quiet, verbose)
    cfg = RunConfig(model=model, method=method, sparsity=sparsity, granularity=granularity,
                    task=task, train_file=train_file, eval_file=eval_file, teacher=teacher,
                    pipeline=pipeline_spec, targets=tuple(targets), output=output, seed=seed,
                    max_train=max_train, max_eval=max_eval, max_length=max_length, epochs=epochs,
                    batch_sizes=batch_sizes, seq_lens=seq_lens, runs=runs,
                    sparse_init=not no_sparse_init, allow_fallback=allow_fallback,
                    progress=not quiet and sys.stderr.isatty(), command=command_line())
    report = run_job(cfg)
    from compressor.report import render_markdown
    click.echo(render_markdown(report))
    click.echo(f"report written to {os.path.join(output, 'report.md')}")


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
@click.option("--batch-sizes", default="1,8", show_default=True, callback=_ints)
@click.option("--seq-lens", default="128", show_default=True, callback=_ints)
@click.option("--runs", default=30, show_default=True, type=int)
@click.option("--threads", default=0, show_default=True, type=int, help="0 = all cores.")
@click.option("--allow-fallback", is_flag=True)
def profile(onnx_path, target_name, baseline, batch_sizes, seq_lens, runs, threads, allow_fallback):
    """Profile an ONNX model (file or folder) on a target."""
    from tabulate import tabulate

    from compressor.onnx_utils import check_bert_io, load_checked
    from compressor.registry import get_target
    _setup_logging(True, False)
    target = get_target(target_name)(threads=threads, allow_fallback=allow_fallback)
    models = {}
    for label, path in (("baseline", baseline), ("model", onnx_path)):
        if path:
            proto = load_checked(path)
            check_bert_io(proto)
            models[label] = _onnx_file(path)
    profiles = target.profile(models, batch_sizes=batch_sizes, seq_lens=seq_lens, runs=runs)
    rows = [[p.model, p.batch, p.seq_len, f"{p.p50_ms:.2f}", f"{p.p90_ms:.2f}", f"{p.p99_ms:.2f}",
             f"{p.throughput:.1f}", ",".join(p.providers_used) + (" (FALLBACK)" if p.fallback else "")]
            for p in profiles]
    click.echo(tabulate(rows, headers=["model", "batch", "seq", "p50 ms", "p90 ms", "p99 ms",
                                       "samples/s", "providers used"]))


def _onnx_file(path):
    from pathlib import Path
    p = Path(path)
    return p / "model.onnx" if p.is_dir() else p


@cli.command()
@click.argument("folder", type=click.Path())
@click.option("--format", "fmt", default="md", show_default=True, type=click.Choice(["md", "json"]))
def report(folder, fmt):
    """Print the report of a finished run folder."""
    import json

    from compressor.report import load_report, render_markdown
    data = load_report(folder)
    click.echo(json.dumps(data, indent=2) if fmt == "json" else render_markdown(data))


def main(argv=None) -> int:
    """Entry point: runs the CLI and maps errors to exit codes without tracebacks."""
    try:
        cli.main(args=argv, prog_name="compress", standalone_mode=False)
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
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return 130
    return 0


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
