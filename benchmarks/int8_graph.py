"""A leaner INT8 graph? Every way the graph passes can make an fp32 export INT8, on the dense model
and on a stripped deployment, scored on dev, timed side by side on real texts, with ONNX Runtime's
per-operator profile of each (where the time goes).

Variants of each fp32 export (``--folders``: fp32 ``model.onnx`` folders with their tokenizer, e.g.
``out/demo/dense`` and ``out/demo/candidates/x1.41/05-export`` after ``make demo``):

- ``dynamic``: ``quantize`` as ``compress run`` deploys it (ORT's ``quantize_dynamic`` defaults,
  per-tensor weights; the reference every ratio is against);
- ``per-channel``: one weight scale per output channel;
- ``fused+dynamic``: ``ort-fuse`` (one ``Attention`` per layer with that layer's head count,
  ``SkipLayerNormalization``, ``BiasGelu``, ``EmbedLayerNormalization``) and then ``quantize``
  (``QAttention``);
- ``fused+linear``: the same with only MatMul/Attention quantized (embeddings fp32);
- ``static``: static QDQ with calibration on 64 training texts (ORT's CPU EP fuses QDQ pairs into
  ``QLinear*`` kernels).

Decisions read dev (``dev acc``); eval accuracy is shown, never used. Latency: every variant of
every folder timed interleaved by ``CpuTarget.profile`` on the same real eval texts (64 texts one
by one at b1, 8 batches at b32), ratios per text / per batch against ``dynamic`` of the same
folder with bootstrap 95% intervals. The machine must be otherwise idle for the timings.

    python benchmarks/int8_graph.py --folders out/demo/dense,out/demo/candidates/x1.41/05-export

Writes ``<out>/int8-graph.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import frontier  # noqa: E402  (data and context helpers of the frontier benchmark)

VARIANTS = {
    "dynamic": ["quantize"],
    "per-channel": ["quantize{per_channel=true}"],
    "fused+dynamic": ["ort-fuse{strict=false}", "quantize"],
    "fused+linear": ["ort-fuse{strict=false}", "quantize{ops=linear}"],
    "static": ["quantize{mode=static,calibration_batches=8}"],
}
REFERENCE = "dynamic"
BATCHES = (1, 32)


def build(folder: Path, work: Path, task) -> dict:
    """``variant -> model.onnx`` of the fp32 export in ``folder``; a variant whose passes fail
    is left out with its error."""
    from compressor.artifact import OnnxModel
    from compressor.pipeline import Pipeline
    fp32 = OnnxModel(folder)
    paths, errors = {}, {}
    for i, (label, steps) in enumerate(VARIANTS.items()):
        try:
            ctx = frontier.make_ctx(work / label, task, 0)
            paths[label] = Pipeline(",".join(steps)).run(fp32, ctx, first_index=10 * (i + 1)).artifact.path
        except Exception as exc:  # a variant ORT cannot build on this graph is a result, not a crash
            errors[label] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            frontier.log.warning("%s on %s failed: %s", label, folder, errors[label])
    return {"paths": paths, "errors": errors}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--folders", required=True, help="comma list of fp32 export folders (model.onnx + tokenizer)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    frontier.logging.basicConfig(level=frontier.logging.INFO, stream=sys.stderr,
                                 format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from compressor.artifact import atomic_write_text
    from compressor.onnx_utils import folder_tokenizer, onnx_accuracy
    from compressor.op_profile import op_breakdown
    from compressor.profiling import real_batches, speed_intervals
    from compressor.report import machine_info
    from compressor.size_breakdown import size_breakdown
    from targets.cpu import CpuTarget

    task = frontier.load_data({"dev_size": None, "data_seed": 0, "max_eval": 0})
    cache = Path(args.out) / ".cache" / "int8-graph"
    target = CpuTarget(threads=args.threads)
    data = {"command": " ".join(["python", *sys.argv]), "machine": machine_info(), "created": frontier._now(),
            "folders": {}}
    md = []
    for f in args.folders.split(","):
        folder = Path(f)
        built = build(folder, cache / folder.name, task)
        paths = built["paths"]
        rows = {label: {"dev_accuracy": onnx_accuracy(p.parent, task.dev, max_length=frontier.MAX_LENGTH),
                        "accuracy": onnx_accuracy(p.parent, task.eval, max_length=frontier.MAX_LENGTH),
                        "mb": size_breakdown(p)["total_bytes"] / 1e6} for label, p in paths.items()}
        real = real_batches(folder_tokenizer(folder), task.eval, BATCHES, frontier.MAX_LENGTH, seed=0)
        labels = {("dense" if label == REFERENCE else label): p for label, p in paths.items()}
        profiles = speed_intervals([p.to_dict() for p in target.profile(
            labels, batch_sizes=(), seq_lens=(), runs=args.runs, real_inputs=real)], references=("dense",))
        for p in profiles:
            label = REFERENCE if p["model"] == "dense" else p["model"]
            r = rows[label]
            r[f"p50_b{p['batch']}"] = p["p50_ms"]
            iv = p.get("speedup_interval", {}).get("dense")
            if iv:
                r[f"x_b{p['batch']}"] = [iv["ratio"], iv["low"], iv["high"]]
        for label, p in paths.items():
            rows[label]["ops"] = op_breakdown(target, p, real[1])
        data["folders"][str(folder)] = {"rows": rows, "errors": built["errors"]}
        md += [f"### {folder}", "", "| variant | dev acc | eval acc | MB | p50 b1 ms | × b1 vs dynamic (95%) "
               "| p50 b32 ms | × b32 vs dynamic (95%) | top ops at b1 (share) |", "|---|---|---|---|---|---|---|---|---|"]
        for label, r in rows.items():
            def x(key):
                v = r.get(key)
                return f"{v[0]:.2f} ({v[1]:.2f}..{v[2]:.2f})" if v else "1"
            top = ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in r["ops"]["ops"][:4])
            md.append(f"| {label} | {r['dev_accuracy']:.4f} | {r['accuracy']:.4f} | {r['mb']:.1f} | "
                      f"{r.get('p50_b1', 0):.2f} | {x('x_b1')} | {r.get('p50_b32', 0):.2f} | {x('x_b32')} | {top} |")
        md += [f"- {label}: failed: {err}" for label, err in built["errors"].items()] + [""]
    stem = Path(args.out) / "int8-graph"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, default=str))
    atomic_write_text(stem.with_suffix(".md"), "\n".join(md) + f"\nCommand: `{data['command']}`\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
