"""A fixed small run through every torch and graph pass that reads a model's layout, for checking
that a refactor changes nothing: same metrics, same ONNX bytes.

MiniLM on 200 rotten-tomatoes rows, seeded: fine-tune once, then one pipeline per method family
(magnitude weight / structured + strip, NIP, RPP structured, SparseBERT, CAP structured, fisher at
a FLOP budget + distill + layer-drop + vocab-prune + trim-positions), each exported, INT8 and
sparse-init where they apply. Prints one JSON document: per pipeline the metrics each step
reported (timings dropped) and the sha256 of every ONNX file it wrote.

    python benchmarks/fingerprint.py -o /tmp/fp-before > before.json
    python benchmarks/fingerprint.py -o /tmp/fp-after  > after.json
    python benchmarks/fingerprint.py --diff before.json after.json

About 10 minutes on 2 CPU cores. Nothing here is timed, so the result does not depend on load.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAIN = "epochs=1,max_train=200"
PIPELINES = {
    "magnitude": f"magnitude{{sparsity=0.5,{TRAIN}}},export,quantize,sparse-init",
    "magnitude-structured": f"magnitude{{sparsity=0.5,granularity=structured,{TRAIN}}},strip,export",
    "nip": f"nip{{sparsity=0.5,steps=2,{TRAIN}}},export",
    "rpp-structured": f"rpp{{sparsity=0.5,granularity=structured,{TRAIN}}},strip,export",
    "sparsebert": f"sparsebert{{sparsity=0.5,{TRAIN}}},export",
    "cap-structured": f"cap{{sparsity=0.5,granularity=structured,stages=1,extra=64,{TRAIN}}},strip,export",
    "fisher": ("fisher{flops=0.5,samples=64},distill{epochs=1,min_steps=0,max_train=200},"
               "layer-drop{keep=4},vocab-prune,trim-positions{max_positions=128},export,embed-int8,quantize"),
}
VOLATILE = ("seconds", "time", "elapsed", "_s", "per_second", "path", "dir", "folder")


def _clean(value):
    """Metrics without timings or paths, floats rounded to 9 significant digits."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items())
                if not any(tag in k.lower() for tag in VOLATILE)}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.9g}")
    return value


def _onnx_hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()[:16]
            for p in sorted(folder.rglob("*.onnx*")) if p.is_file()}


def run(out: Path, only: list[str]) -> dict:
    import torch

    from compressor import Pipeline, RunContext
    from compressor.data import load_task
    from compressor.models import load_model

    if out.exists():
        shutil.rmtree(out)
    task = load_task("rotten-tomatoes").subsample(200, 200)
    torch.manual_seed(0)
    model = load_model("minilm", num_labels=task.num_labels, label_names=task.label_names)
    pretrained = model
    ctx = RunContext(workdir=out / "teacher", seed=0, data=task, pretrained=pretrained, progress=False)
    result = Pipeline(f"finetune{{{TRAIN}}}").run(model, ctx)
    teacher = result.artifact
    found = {"finetune": [_clean(r.metrics) for r in result.records]}
    for name, spec in PIPELINES.items():
        if only and name not in only:
            continue
        torch.manual_seed(0)
        ctx = RunContext(workdir=out / name, seed=0, data=task, teacher=teacher, pretrained=pretrained,
                         progress=False)
        start = teacher if not name.startswith(("sparsebert", "cap")) else pretrained
        result = Pipeline(spec).run(start, ctx)
        found[name] = {"metrics": [{r.name: _clean(r.metrics)} for r in result.records],
                       "onnx": _onnx_hashes(out / name)}
        print(f"{name}: done", file=sys.stderr)
    return found


def diff(a: dict, b: dict, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                out.append(f"{where}/{k}: only in {'after' if k in b else 'before'}")
            else:
                out += diff(a[k], b[k], f"{where}/{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in diff(x, y, f"{where}[{i}]")]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-o", "--out", type=Path, default=Path("out/fingerprint"))
    parser.add_argument("--only", default="", help="comma list of pipelines (default: all)")
    parser.add_argument("--diff", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = parser.parse_args()
    if args.diff:
        found = diff(*(json.loads(p.read_text()) for p in args.diff))
        print("\n".join(found) or "identical")
        return 1 if found else 0
    logging.basicConfig(level=logging.WARNING)
    print(json.dumps(run(args.out, [s for s in args.only.split(",") if s]), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
