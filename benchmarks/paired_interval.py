"""How sure is "compressed beats dense INT8"? Paired intervals on the eval split of a finished run.

Rebuilds the run's eval split from its recipe.yaml exactly as ``compress run`` does (task, max_eval,
seed; the eval split is never used to choose anything), scores two of its ONNX rows example by
example and prints each accuracy with a Wilson 95% interval and the difference with a paired
bootstrap 95% interval (10,000 resamples of the eval examples, seeded) and the discordant counts.

    python benchmarks/paired_interval.py out/demo                       # compressed vs dense-int8
    python benchmarks/paired_interval.py out/demo --a compressed --b dense
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from compressor.stats import paired_bootstrap, wilson  # noqa: E402  (plain numpy, cheap)


def onnx_in_run(run: Path, recorded: str) -> Path:
    """The recorded ONNX path inside ``run``: the report stores it as the run saw it (relative to
    the folder the run started in), so a relative one is matched from its first part that is a
    step or row folder of ``run``."""
    path = Path(recorded)
    if path.is_absolute():
        return path
    for i in range(len(path.parts)):
        candidate = run.joinpath(*path.parts[i:])
        if candidate.is_file() and (run / path.parts[i]).is_dir():
            return candidate
    raise SystemExit(f"{recorded} is not inside {run}")


def correct(onnx_path: str, examples, max_length: int):
    from compressor.onnx_utils import onnx_correct
    return onnx_correct(Path(onnx_path), examples, max_length).astype(float)


def main() -> int:
    import yaml

    from compressor.data import load_task
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--a", default="compressed")
    ap.add_argument("--b", default="dense-int8")
    ap.add_argument("--resamples", type=int, default=10_000)
    args = ap.parse_args()
    recipe = yaml.safe_load((args.run / "recipe.yaml").read_text())
    report = json.loads((args.run / "report.json").read_text())
    d, seed = recipe["data"], recipe["seed"]
    task = load_task(d["task"] if not d["train"] else None, d["train"], d["eval"], seed=seed, columns=d["columns"])
    eval_rows = task.subsample(d["max_train"] or None, d["max_eval"] or None, seed=seed).eval
    if len(eval_rows) != report["data"]["eval_size"]:
        raise SystemExit(f"eval split has {len(eval_rows)} rows, the report {report['data']['eval_size']}")
    a, b = (correct(onnx_in_run(args.run, report["models"][m]["onnx_path"]), eval_rows, d["max_length"])
            for m in (args.a, args.b))
    n = len(eval_rows)
    for label, c in ((args.a, a), (args.b, b)):  # scored the run's own models on its own split
        if abs(c.mean() - report["models"][label]["accuracy_onnx"]) > 1e-9:
            raise SystemExit(f"{label}: scored {c.mean():.4%}, the report says "
                             f"{report['models'][label]['accuracy_onnx']:.4%}: not the run's model or split")
    for label, c in ((args.a, a), (args.b, b)):
        lo, hi = wilson(int(c.sum()), n)
        print(f"{label}: {c.mean():.2%} (95% Wilson {lo:.2%}..{hi:.2%}), reported "
              f"{report['models'][label]['accuracy_onnx']:.2%}")
    boot = paired_bootstrap(a, b, resamples=args.resamples, seed=0)
    print(f"{args.a} - {args.b}: {100 * boot['diff']:+.2f} points (paired bootstrap 95% "
          f"{100 * boot['low']:+.2f}..{100 * boot['high']:+.2f}); only {args.a} right: {boot['a_only']}, "
          f"only {args.b} right: {boot['b_only']}, n = {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
