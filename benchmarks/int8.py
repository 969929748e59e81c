"""Which INT8 deployment? The dense fine-tuned MiniLM (the frontier's seed-0 teacher) quantized
every way the graph passes can, scored on dev (where the default is chosen) and eval, sized, and
timed interleaved on ONNX Runtime's CPU EP (p50 of batches of real eval texts at b1 and b8).

Variants:

- ``fp32``: the export;
- ``ort-default``: one ``quantize_dynamic(model, out, weight_type=QInt8)`` call with ONNX Runtime's
  defaults (every op it quantizes: MatMul, Attention, and the embedding Gathers with one scale per
  table): the baseline a user reaches for first (``quantize{ops=all}``);
- ``per-channel``: the same with one weight scale per output channel (``per_channel=true``);
- ``linear``: MatMul/Attention only, embeddings fp32 (``quantize{ops=linear}``);
- ``linear+embed``: ``linear``, then the word table int8 with a scale per row (``embed-int8``);
- ``linear+embed-all``: the same with ``embed-int8{tables=all}`` (large tables other than the
  word table too).

    python benchmarks/int8.py            # needs the frontier's cached teacher (or trains it, ~7 min)
    python benchmarks/int8.py --cells fisher-f2+r@0,fisher-s2i+r@0   # the frontier's kept exports
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import frontier  # noqa: E402  (data, teacher and context helpers of the frontier benchmark)

VARIANTS = {
    "ort-default": ["quantize{mode=dynamic,ops=all}"],
    "per-channel": ["quantize{mode=dynamic,ops=all,per_channel=true}"],
    "linear": ["quantize{mode=dynamic,ops=linear}"],
    "linear+embed": ["quantize{mode=dynamic,ops=linear}", "embed-int8"],
    "linear+embed-all": ["quantize{mode=dynamic,ops=linear}", "embed-int8{tables=all}"],
}
BATCHES = (1, 8)


def variants(fp32, work: Path) -> dict:
    """``label -> model.onnx`` of ``fp32`` (an OnnxModel) and each of :data:`VARIANTS`."""
    from compressor.pipeline import Pipeline
    ctx = frontier.make_ctx(work, None, 0)
    paths = {"fp32": fp32.path}
    for i, (label, steps) in enumerate(VARIANTS.items()):
        paths[label] = Pipeline(",".join(steps)).run(fp32, ctx, first_index=10 * (i + 1)).artifact.path
    return paths


def score(paths: dict, task) -> dict:
    from compressor.onnx_utils import onnx_accuracy
    from compressor.size_breakdown import size_breakdown
    return {label: {"dev_accuracy": onnx_accuracy(path.parent, task.dev, max_length=frontier.MAX_LENGTH),
                    "accuracy": onnx_accuracy(path.parent, task.eval, max_length=frontier.MAX_LENGTH),
                    "size": size_breakdown(path)} for label, path in paths.items()}


def table(rows: dict, timed: bool) -> list[str]:
    lines = ["| variant | dev acc | eval acc | MB | embeddings MB |" + (" p50 b1 ms (x fp32) | p50 b8 ms (x fp32) |"
                                                                     if timed else ""),
             "|---|---|---|---|---|" + ("---|---|" if timed else "")]
    for label, r in rows.items():
        line = (f"| {label} | {r['dev_accuracy']:.4f} | {r['accuracy']:.4f} | {r['size']['total_bytes'] / 1e6:.1f} | "
                f"{r['size']['embeddings_bytes'] / 1e6:.1f} |")
        if timed:
            t, d = r["p50_ms"], rows["fp32"]["p50_ms"]
            line += (f" {t['b1']:.2f} (x{d['b1'] / t['b1']:.2f}) | {t['b8']:.2f} (x{d['b8'] / t['b8']:.2f}) |")
        lines.append(line)
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--cells", default="", help="also the frontier's kept fp32 exports of these cells "
                    "(comma list of point@seed; accuracy and size only), written to int8-cells.*")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    frontier.logging.basicConfig(level=frontier.logging.INFO, stream=sys.stderr,
                                 format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from compressor.artifact import OnnxModel, atomic_write_text
    from compressor.pipeline import Pipeline
    from compressor.profiling import real_batches
    from compressor.report import machine_info
    from targets.cpu import CpuTarget

    task = frontier.load_data({"dev_size": None, "data_seed": 0, "max_eval": 0})
    cache = Path(args.out) / ".cache"
    command = " ".join(["python", *sys.argv])
    if args.cells:
        data = {"command": command, "machine": machine_info(), "created": frontier._now(), "cells": {}}
        md = []
        for key in args.cells.split(","):
            folder = cache / "cells" / key
            if not (folder / "model.onnx").is_file():
                raise SystemExit(f"no kept export for cell {key!r} in {folder.parent}: run the frontier first")
            rows = score(variants(OnnxModel(folder), cache / f"int8-{key}"), task)
            data["cells"][key] = rows
            md += [f"### {key}", "", *table(rows, timed=False), ""]
        stem = Path(args.out) / "int8-cells"
        atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, default=str))
        atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + f"\nCommand: `{command}`\n")
        print("\n".join(md))
        return 0
    teacher, record = frontier.get_teacher(task, args.seed, cache, progress=False)
    work = cache / f"int8-seed{args.seed}"
    fp32 = Pipeline("export").run(teacher, frontier.make_ctx(work, None, args.seed), first_index=1).artifact
    paths = variants(fp32, work)
    rows = score(paths, task)
    real = real_batches(teacher.tokenizer, task.eval, BATCHES, frontier.MAX_LENGTH, seed=args.seed)
    profiles = CpuTarget(threads=args.threads).profile(paths, batch_sizes=(), seq_lens=(), runs=args.runs,
                                                       real_inputs=real)
    for p in profiles:
        rows[p.model].setdefault("p50_ms", {})[f"b{p.batch}"] = p.p50_ms
    data = {"command": command, "machine": machine_info(), "teacher": record, "created": frontier._now(),
            "rows": rows}
    stem = Path(args.out) / "int8"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, default=str))
    md = "\n".join(table(rows, timed=True)) + f"\n\nCommand: `{command}`\n"
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
