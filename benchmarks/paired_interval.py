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
import math
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


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
    import numpy as np

    from compressor.onnx_utils import folder_tokenizer, make_session, onnx_predict_logits
    path = Path(onnx_path)
    logits = onnx_predict_logits(make_session(path), folder_tokenizer(path.parent), examples, max_length)
    return np.asarray(logits.argmax(-1) == np.asarray([e.label for e in examples]), dtype=float)


def main() -> int:
    import numpy as np
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
    rng = np.random.default_rng(0)
    boot = np.array([(a[i] - b[i]).mean() for i in rng.integers(0, n, size=(args.resamples, n))])
    lo, hi = np.percentile(boot, [2.5, 97.5])
    print(f"{args.a} - {args.b}: {100 * (a.mean() - b.mean()):+.2f} points (paired bootstrap 95% "
          f"{100 * lo:+.2f}..{100 * hi:+.2f}); only {args.a} right: {int(((a == 1) & (b == 0)).sum())}, "
          f"only {args.b} right: {int(((a == 0) & (b == 1)).sum())}, n = {n}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
