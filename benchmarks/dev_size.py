"""How big must the dev split be? Dev-eval agreement and the noise of a dev decision by dev size.

Every choice ``compress run`` makes (the epoch it keeps, and with an accuracy budget the
configuration) is made on the dev split carved from the training rows (``TaskData.carve_dev``:
whole groups, the movie on rotten-tomatoes, stratified by label). This script measures how much
a dev difference between two models means, from two sources:

(a) ``benchmarks/results/frontier.json``: every configuration x seed x precision cell was scored
    on dev (1,001 rows, 48 movies) and on eval (2,532 rows). For every pair of cells: the dev
    difference against the eval difference (correlation, spread of dev diff - eval diff, sign
    flips, pairs within 1 point on dev but outside 1 point on eval).
(b) A finished run (``out/demo``): its dense, dense-int8, compressed and compressed-fp32 ONNX rows
    are scored example by example on the run's eval split and on its dev split, both rebuilt from
    its recipe.yaml exactly as the run built them (seeded). The eval split, whose rows carry their
    movie, serves as a pool of held-out groups: many dev-like splits of m rows are drawn from it
    (movies drawn with replacement, taken with carve_dev's own label-stratified group picker until
    m rows) and the spread of each model's accuracy and of each paired difference is measured
    at every m. The design effect of grouping is measured on both splits (cluster-robust variance
    by movie over the plain row variance).

Eval is used here only to measure split noise, never to pick a model or a setting of a model.
ONNX Runtime runs with 1 intra-op thread. The exact command of the recorded result:

    .venv/bin/python benchmarks/dev_size.py out/demo --sizes 250,500,1000,2000 --draws 4000
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from paired_interval import onnx_in_run  # noqa: E402

MODELS = ("dense", "dense-int8", "compressed", "compressed-fp32")
COMPARISONS = (("compressed", "dense-int8"), ("compressed", "dense"), ("compressed-fp32", "compressed"))
HERE = Path(__file__).resolve().parent
OLD_DEV_FRACTION, OLD_DEV_MAX = 0.1, 1000  # the default dev size before this measurement


# ---------------------------------------------------------------- (a) the frontier's cells


def frontier_cells(path: Path, drop_collapsed: bool = True) -> list[dict]:
    """One row per (point, seed, precision) with its dev and eval accuracy (points)."""
    data = json.loads(path.read_text())
    majority = data.get("majority", 0.0)
    rows = []
    for key, cell in data["cells"].items():
        for prec in ("fp32", "int8"):
            m = cell.get(prec)
            if not m or m.get("dev_accuracy") is None or m.get("accuracy") is None:
                continue
            if drop_collapsed and m["accuracy"] < majority + 0.05:  # mag97: near the majority class
                continue
            rows.append({"cell": key, "point": cell["point"], "seed": cell["seed"], "precision": prec,
                         "dev": 100 * m["dev_accuracy"], "eval": 100 * m["accuracy"]})
    return rows


def pair_stats(pairs: list[tuple[float, float]]) -> dict:
    """Agreement of dev differences (first) with eval differences (second), in points. Each pair
    is oriented so that its dev difference is >= 0 (the model dev prefers first): the mean of dev
    diff - eval diff is then how much dev overstates the lead of the model it picks. The
    correlation is over both orientations of every pair (so it does not depend on the order)."""
    if not pairs:
        return {"pairs": 0}
    d, e = np.array(pairs, dtype=float).T
    flip = np.where(d < 0, -1.0, 1.0)
    d, e = d * flip, e * flip
    gap = d - e
    both = (d != 0) & (e != 0)
    near = d <= 1.0
    denom = math.sqrt((d ** 2).sum() * (e ** 2).sum())
    return {"pairs": int(d.size),
            "corr": float((d * e).sum() / denom) if denom > 0 else None,
            "slope": float((d * e).sum() / (d ** 2).sum()) if (d ** 2).sum() > 0 else None,
            "gap_mean": float(gap.mean()), "gap_sd": float(gap.std(ddof=1)) if d.size > 1 else 0.0,
            "gap_rms": float(math.sqrt((gap ** 2).mean())),
            "gap_p2_5": float(np.percentile(gap, 2.5)), "gap_p97_5": float(np.percentile(gap, 97.5)),
            "abs_gap_median": float(np.median(np.abs(gap))),
            "sign_flips": int((both & (e < 0)).sum()), "both_nonzero": int(both.sum()),
            "sign_flip_rate": float((both & (e < 0)).sum() / both.sum()) if both.any() else None,
            "within1_dev": int(near.sum()),
            "within1_dev_outside1_eval": int((near & (np.abs(e) > 1.0)).sum()),
            "within1_dev_outside1_eval_rate": float((near & (np.abs(e) > 1.0)).sum() / near.sum()) if near.any() else None}


def frontier_agreement(rows: list[dict]) -> dict:
    """Pair statistics over every pair of cells and over subsets: same seed; close on dev; the
    same model in its two precisions; each INT8 configuration against the same seed's dense INT8
    and against its dense fp32 (the comparisons a dev-only accuracy budget makes). Pairs share
    cells, so they are not independent."""
    out = {"cells": len(rows),
           "level_gap_mean": float(np.mean([r["dev"] - r["eval"] for r in rows])),
           "level_gap_sd": float(np.std([r["dev"] - r["eval"] for r in rows], ddof=1))}
    subsets = {"all pairs": [], "same seed": [], "|dev diff| <= 2": [], "same model, fp32 vs int8": [],
               "int8 config vs dense int8, same seed": [], "int8 config vs dense fp32, same seed": []}
    for a, b in itertools.combinations(rows, 2):
        p = (a["dev"] - b["dev"], a["eval"] - b["eval"])
        subsets["all pairs"].append(p)
        if a["seed"] == b["seed"]:
            subsets["same seed"].append(p)
        if abs(p[0]) <= 2.0:
            subsets["|dev diff| <= 2"].append(p)
        if a["cell"] == b["cell"]:
            subsets["same model, fp32 vs int8"].append(p)
    dense = {(r["seed"], r["precision"]): r for r in rows if r["point"] == "dense"}
    versus = []
    for r in rows:
        if r["point"] == "dense" or r["precision"] != "int8":
            continue
        for base, name in (("int8", "int8 config vs dense int8, same seed"), ("fp32", "int8 config vs dense fp32, same seed")):
            ref = dense.get((r["seed"], base))
            if ref:
                subsets[name].append((r["dev"] - ref["dev"], r["eval"] - ref["eval"]))
                if base == "int8":
                    versus.append({"cell": r["cell"], "dev_diff": r["dev"] - ref["dev"],
                                   "eval_diff": r["eval"] - ref["eval"]})
    out["subsets"] = {k: pair_stats(v) for k, v in subsets.items()}
    out["int8_vs_dense_int8"] = versus
    gaps = [v["dev_diff"] - v["eval_diff"] for v in versus]
    out["int8_vs_dense_int8_gap_mean"] = float(np.mean(gaps)) if gaps else None
    return out


def training_cost(accuracy_file: Path, frontier_file: Path, sizes, n_train: int) -> dict:
    """A rough cost of the rows a dev split takes from training: dense MiniLM eval accuracy at two
    training sizes on record (benchmarks/accuracy.py's 2000-row teacher, 3 epochs; the frontier's
    teachers at the CLI budget, mean over seeds), a line in log(train rows) through them, read at
    ``n_train - m`` for every dev size m."""
    acc = json.loads(accuracy_file.read_text())["dense"]
    fr = json.loads(frontier_file.read_text())
    big = [c["fp32"]["accuracy"] for c in fr["cells"].values() if c["point"] == "dense"]
    x0, y0 = acc["train_size"], 100 * acc["accuracy"]
    x1, y1 = fr["train_size"], 100 * float(np.mean(big))
    per_efold = (y1 - y0) / math.log(x1 / x0)
    out = {"points": [[x0, y0], [x1, y1]], "points_per_efold": per_efold, "n_train": n_train, "by_m": {}}
    for m in sizes:
        out["by_m"][str(m)] = {"train_left": n_train - m,
                               "accuracy_vs_no_dev": per_efold * math.log((n_train - m) / n_train)}
    return out


# ---------------------------------------------------------------- (b) a run's models, per example


def run_splits(run: Path):
    """The run's eval and dev splits, rebuilt from its recipe.yaml as ``compress run`` does."""
    import yaml

    from compressor.data import load_task
    from compressor.run import _dev_size
    recipe = yaml.safe_load((run / "recipe.yaml").read_text())
    report = json.loads((run / "report.json").read_text())
    d, seed = recipe["data"], recipe["seed"]
    task = load_task(d["task"] if not d["train"] else None, d["train"], d["eval"], seed=seed, columns=d["columns"])
    task = task.subsample(d["max_train"] or None, d["max_eval"] or None, seed=seed)
    sizes = [_dev_size(d["dev_size"])]
    if sizes[0] is None:  # the default; a run made before 2026-12-07 had 10% of train, at most 1000
        sizes.append(min(OLD_DEV_MAX, round(OLD_DEV_FRACTION * len(task.train))))
    for size in sizes:
        carved = task.carve_dev(size, seed=seed)
        if len(carved.dev) == report["data"]["dev_size"]:
            break
    task = carved
    for split, rows in (("eval", task.eval), ("dev", task.dev), ("train", task.train)):
        if len(rows) != report["data"][f"{split}_size"]:
            raise SystemExit(f"{split} split has {len(rows)} rows, the report {report['data'][f'{split}_size']}")
    return task, recipe, report


def score(path: Path, examples, max_length: int, threads: int) -> np.ndarray:
    """Per-example 0/1 correctness of an ONNX row (the tokenizer beside it), ``threads`` threads."""
    from compressor.onnx_utils import folder_tokenizer, make_session, onnx_predict_logits
    session = make_session(path, threads=threads)
    logits = onnx_predict_logits(session, folder_tokenizer(path.parent), examples, max_length)
    return (logits.argmax(axis=-1) == np.array([e.label for e in examples])).astype(np.int8)


def cluster_var(x: np.ndarray, groups: np.ndarray) -> tuple[float, float]:
    """(row variance of the mean, cluster-robust variance of the mean by group) of ``x``."""
    n = x.size
    srs = x.var(ddof=1) / n
    mean = x.mean()
    uniq, inv = np.unique(groups, return_inverse=True)
    resid = np.bincount(inv, weights=x - mean)
    g = uniq.size
    return float(srs), float(g / (g - 1) * (resid ** 2).sum() / n ** 2)


def split_summary(scores: dict, groups: np.ndarray) -> dict:
    """Accuracy of each model and each paired difference on one split, with row and cluster SEs."""
    out = {"rows": int(groups.size), "groups": int(np.unique(groups).size),
           "rows_per_group": float(groups.size / np.unique(groups).size)}
    series = {m: scores[m].astype(float) for m in MODELS}
    series.update({f"{a} - {b}": scores[a].astype(float) - scores[b] for a, b in COMPARISONS})
    for name, x in series.items():
        srs, clu = cluster_var(x, groups)
        out[name] = {"value": 100 * float(x.mean()), "se_rows": 100 * math.sqrt(srs),
                     "se_groups": 100 * math.sqrt(clu), "deff": clu / srs if srs > 0 else None}
        if " - " in name:
            out[name]["discordant"] = int((x != 0).sum())
    return out


def resample(scores: dict, groups: list, labels: np.ndarray, want_share: dict, sizes, draws: int,
             seed: int) -> dict:
    """Dev-like splits of m rows drawn from the pool: movies drawn with replacement, in that order
    taken by carve_dev's own label-stratified picker until m rows. The spread (SD and central 95%)
    of each model's accuracy and each paired difference, in points, for every m."""
    from compressor.data import _pick_groups, _proportional
    rng = random.Random(seed)
    index: dict = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    keys = list(index)
    counts = {g: Counter(labels[index[g]].tolist()) for g in keys}
    mean_size = len(groups) / len(keys)
    names = list(MODELS) + [f"{a} - {b}" for a, b in COMPARISONS]
    series = {m: scores[m].astype(float) for m in MODELS}
    series.update({f"{a} - {b}": scores[a].astype(float) - scores[b] for a, b in COMPARISONS})
    out = {}
    for m in sizes:
        want = dict(zip(sorted(want_share), _proportional(m, [want_share[k] for k in sorted(want_share)])))
        values = {n: [] for n in names}
        rows, ngroups = [], []
        for _ in range(draws):
            order = [(j, rng.choice(keys)) for j in range(int(3 * m / mean_size) + 20)]
            taken, _have = _pick_groups(order, {k: counts[k[1]] for k in order}, want)
            idx = np.concatenate([index[k[1]] for k in taken])
            rows.append(idx.size)
            ngroups.append(len(taken))
            for n in names:
                values[n].append(series[n][idx].mean())
        cell = {"rows_mean": float(np.mean(rows)), "groups_mean": float(np.mean(ngroups))}
        for n in names:
            v = 100 * np.array(values[n])
            lo, hi = np.percentile(v, [2.5, 97.5])
            cell[n] = {"sd": float(v.std(ddof=1)), "half95": float((hi - lo) / 2)}
        out[str(m)] = cell
    return out


def analytic(summary: dict, sizes) -> dict:
    """SD at m rows from a split's own row variance and design effect: sqrt(deff * var_row / m)."""
    out = {}
    for m in sizes:
        cell = {}
        for name in list(MODELS) + [f"{a} - {b}" for a, b in COMPARISONS]:
            s = summary[name]
            var_row = s["se_rows"] ** 2 * summary["rows"]
            cell[name] = {"sd_rows": math.sqrt(var_row / m), "sd_groups": math.sqrt(s["deff"] * var_row / m)}
        out[str(m)] = cell
    return out


# ---------------------------------------------------------------- output


def markdown(result: dict) -> str:
    fr, b = result["frontier"], result["run"]
    sizes = result["sizes"]
    comps = [f"{a} - {c}" for a, c in COMPARISONS]
    lines = [f"# Dev size: how much a dev difference means ({result['created']})", "",
             f"Command: `{result['command']}`. Eval is used only to measure split noise, never to pick a model.", "",
             "## (a) Frontier cells: dev differences against eval differences", "",
             f"{fr['cells']} cells (point x seed x precision; collapsed cells left out) scored on dev "
             f"({result['frontier_dev_rows']} rows) and on eval ({result['frontier_eval_rows']} rows). A cell's dev "
             f"accuracy minus its eval accuracy: mean {fr['level_gap_mean']:+.2f}, SD {fr['level_gap_sd']:.2f} points. "
             "Each pair is oriented so that dev prefers its first model (dev diff >= 0); pairs share cells "
             "(not independent).", "",
             "| pairs | n | corr | slope | dev diff - eval diff: mean / SD / central 95% | median abs | eval reverses dev | dev diff <= 1 but eval diff outside ±1 |",
             "|---|---|---|---|---|---|---|---|"]
    for name, s in fr["subsets"].items():
        if not s["pairs"]:
            continue
        corr = f"{s['corr']:.2f}" if s["corr"] is not None else "-"
        flips = (f"{s['sign_flips']}/{s['both_nonzero']} ({100 * s['sign_flip_rate']:.0f}%)"
                 if s["sign_flip_rate"] is not None else "-")
        w = (f"{s['within1_dev_outside1_eval']}/{s['within1_dev']} ({100 * s['within1_dev_outside1_eval_rate']:.0f}%)"
             if s["within1_dev"] else "-")
        lines.append(f"| {name} | {s['pairs']} | {corr} | {s['slope']:.2f} | {s['gap_mean']:+.2f} / {s['gap_sd']:.2f} / "
                     f"{s['gap_p2_5']:+.2f}..{s['gap_p97_5']:+.2f} | {s['abs_gap_median']:.2f} | {flips} | {w} |")
    lines += ["", "Each INT8 configuration minus the same seed's dense INT8 (points):", "",
              "| cell | dev diff | eval diff | dev - eval |", "|---|---|---|---|"]
    for v in sorted(fr["int8_vs_dense_int8"], key=lambda v: -v["dev_diff"]):
        lines.append(f"| {v['cell']} | {v['dev_diff']:+.2f} | {v['eval_diff']:+.2f} | {v['dev_diff'] - v['eval_diff']:+.2f} |")
    lines += [f"| mean | | | {fr['int8_vs_dense_int8_gap_mean']:+.2f} |"]
    dv, ev = b["dev"], b["eval"]
    lines += ["", f"## (b) {result['run_dir']}: the run's four models on its own dev and eval splits", "",
              f"dev: {dv['rows']} rows in {dv['groups']} movies ({dv['rows_per_group']:.1f} a movie); "
              f"eval: {ev['rows']} rows in {ev['groups']} movies ({ev['rows_per_group']:.1f} a movie). "
              "SE: standard error from rows alone / cluster-robust by movie; deff: their variance ratio "
              "(design effect of taking whole movies).", "",
              "| quantity | dev | SE rows / by movie (deff) | eval | SE rows / by movie (deff) | discordant rows dev / eval |",
              "|---|---|---|---|---|---|"]
    for name in list(MODELS) + comps:
        pct = " - " not in name
        val = (lambda v: f"{v:.2f}%") if pct else (lambda v: f"{v:+.2f} pts")
        disc = "" if pct else f"{dv[name]['discordant']} / {ev[name]['discordant']}"
        lines.append(f"| {name} | {val(dv[name]['value'])} | {dv[name]['se_rows']:.2f} / {dv[name]['se_groups']:.2f} "
                     f"({dv[name]['deff']:.2f}) | {val(ev[name]['value'])} | {ev[name]['se_rows']:.2f} / "
                     f"{ev[name]['se_groups']:.2f} ({ev[name]['deff']:.2f}) | {disc} |")
    lines += ["", f"### Noise of a dev split of m rows: {result['draws']} draws at each m, movies drawn with replacement "
              "from a pool and taken by carve_dev's label-stratified picker until m rows. SD in points, "
              "the 95% half-width in brackets; **eval pool** / dev pool", "",
              "| m | movies | SD dense | SD compressed | " + " | ".join(comps) + " |",
              "|---|---|---|---|" + "---|" * len(comps)]
    for m in sizes:
        c, d = b["resampled_from_eval"][str(m)], b["resampled_from_dev"][str(m)]
        cell = lambda n: f"**{c[n]['sd']:.2f} ({c[n]['half95']:.2f})** / {d[n]['sd']:.2f} ({d[n]['half95']:.2f})"
        lines.append(f"| {m} | {c['groups_mean']:.0f} | {cell('dense')} | {cell('compressed')} | "
                     + " | ".join(cell(n) for n in comps) + " |")
    lines += ["", "Cross-check without resampling: SD of a paired difference at m rows from a split's own row "
              "variance and design effect, sqrt(deff x var_row / m) (dev split / eval split):", "",
              "| m | " + " | ".join(comps) + " |", "|---|" + "---|" * len(comps)]
    for m in sizes:
        c, e = b["analytic_dev"][str(m)], b["analytic_eval"][str(m)]
        lines.append(f"| {m} | " + " | ".join(f"{c[n]['sd_groups']:.2f} / {e[n]['sd_groups']:.2f}" for n in comps) + " |")
    lines += ["", "Predicted SD of (dev diff - eval diff) from sampling alone, sqrt(SE_dev^2 + SE_eval^2) with "
              f"the movie design effect, for the run's own pairs at {dv['rows']} dev / {ev['rows']} eval rows: "
              + "; ".join(f"{n} {v:.2f}" for n, v in result["predicted_gap_sd"].items())
              + f" points (measured on the frontier's pairs: all {fr['subsets']['all pairs']['gap_sd']:.2f}, "
              f"fp32 vs int8 of one model {fr['subsets']['same model, fp32 vs int8']['gap_sd']:.2f}, "
              f"int8 configuration vs dense int8 {fr['subsets']['int8 config vs dense int8, same seed']['gap_sd']:.2f}).", ""]
    c = result["training_cost"]
    (x0, y0), (x1, y1) = c["points"]
    lines += ["## The other side: training rows a dev split takes (rough)", "",
              f"Dense MiniLM eval accuracy {y0:.2f}% at {x0} training rows (benchmarks/results/accuracy.json, 3 epochs) "
              f"and {y1:.2f}% at {x1} rows (the frontier's teachers, mean of seeds): "
              f"{c['points_per_efold']:.2f} points per e-fold of training rows. Read at {c['n_train']} - m rows:", "",
              "| m | train rows left | expected accuracy vs no dev split (every model) |", "|---|---|---|"]
    for m in sizes:
        r = c["by_m"][str(m)]
        lines.append(f"| {m} | {r['train_left']} | {r['accuracy_vs_no_dev']:+.2f} pts |")
    lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path, nargs="?", default=Path("out/demo"))
    ap.add_argument("--frontier", type=Path, default=HERE / "results" / "frontier.json")
    ap.add_argument("--accuracy", type=Path, default=HERE / "results" / "accuracy.json",
                    help="the 2000-row dense teacher, for the training-rows cost")
    ap.add_argument("--sizes", default="250,500,1000,2000", help="dev sizes m (rows), comma-separated")
    ap.add_argument("--draws", type=int, default=4000, help="dev-like splits drawn at each m")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--scores", type=Path, default=None,
                    help="cache the per-example scores here (.npz): read if present, else written")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dev-size",
                    help="writes OUT.json and OUT.md")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.time()

    frontier = json.loads(args.frontier.read_text())
    agreement = frontier_agreement(frontier_cells(args.frontier))

    task, recipe, report = run_splits(args.run)
    max_length = recipe["data"]["max_length"]
    if args.scores and args.scores.is_file():
        cached = np.load(args.scores)
        scores = {s: {m: cached[f"{s}/{m}"] for m in MODELS} for s in ("eval", "dev")}
    else:
        scores = {s: {} for s in ("eval", "dev")}
        for m in MODELS:
            path = onnx_in_run(args.run, report["models"][m]["onnx_path"])
            for s, rows in (("eval", task.eval), ("dev", task.dev)):
                scores[s][m] = score(path, rows, max_length, args.threads)
                print(f"scored {m} on {s}: {scores[s][m].mean():.4%} ({time.time() - t0:.0f} s)", file=sys.stderr)
        if args.scores:
            np.savez(args.scores, **{f"{s}/{m}": scores[s][m] for s in scores for m in MODELS})
    for m in MODELS:  # the run's own models on the run's own eval split
        if abs(scores["eval"][m].mean() - report["models"][m]["accuracy_onnx"]) > 1e-9:
            raise SystemExit(f"{m}: scored {scores['eval'][m].mean():.4%} on eval, the report says "
                             f"{report['models'][m]['accuracy_onnx']:.4%}: not the run's model or split")
    if any(e.group is None for e in task.eval):
        raise SystemExit("eval rows carry no group: this measurement needs grouped rows (rotten-tomatoes)")
    groups = {s: np.array([e.group for e in rows]) for s, rows in (("eval", task.eval), ("dev", task.dev))}
    train_labels = Counter(e.label for e in task.train + task.dev)  # carve_dev's proportions
    summaries = {s: split_summary(scores[s], groups[s]) for s in ("eval", "dev")}
    resampled = {s: resample(scores[s], list(groups[s]), np.array([e.label for e in rows]), dict(train_labels),
                             sizes, args.draws, args.seed)
                 for s, rows in (("eval", task.eval), ("dev", task.dev))}
    dev_rows = summaries["dev"]["rows"]
    at_dev = analytic(summaries["dev"], [dev_rows])[str(dev_rows)]
    predicted = {f"{a} - {b}": math.sqrt(at_dev[f"{a} - {b}"]["sd_groups"] ** 2
                                         + summaries["eval"][f"{a} - {b}"]["se_groups"] ** 2)
                 for a, b in COMPARISONS}
    result = {
        "created": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": " ".join([".venv/bin/python", "benchmarks/dev_size.py"] + sys.argv[1:]),
        "run_dir": str(args.run), "sizes": sizes, "draws": args.draws, "seed": args.seed, "threads": args.threads,
        "frontier_file": str(args.frontier), "frontier_dev_rows": frontier.get("dev_size"),
        "frontier_eval_rows": frontier.get("eval_size"), "frontier": agreement,
        "run": {"train_rows": len(task.train), "eval": summaries["eval"], "dev": summaries["dev"],
                "resampled_from_eval": resampled["eval"], "resampled_from_dev": resampled["dev"],
                "analytic_dev": analytic(summaries["dev"], sizes),
                "analytic_eval": analytic(summaries["eval"], sizes)},
        "predicted_gap_sd": predicted,
        "training_cost": training_cost(args.accuracy, args.frontier, sizes, len(task.train) + len(task.dev)),
        "seconds": round(time.time() - t0, 1),
    }
    text = markdown(result)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
