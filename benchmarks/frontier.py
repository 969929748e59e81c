"""The deployment frontier: accuracy vs measured CPU latency and file size of every way a user can
make all-MiniLM-L6-v2 on rotten-tomatoes smaller, at the CLI's default budget.

Points (each trained from the seed's own fine-tuned teacher, fp32 and dynamic INT8 rows):

- ``dense``: the fine-tuned teacher itself, and its ``quantize_dynamic`` INT8 (the baseline users
  reach for first);
- ``drop3`` / ``drop2``: a layer-dropped dense model (keep 3 / 2 of the 6 layers, then KD): the
  smaller dense model a user would pick instead;
- ``fisher-f2`` / ``-f4`` / ``-f8``: structured 2x / 4x / 8x encoder FLOP cut (Kwon et al. 2022
  mask search, rearrangement and tuning) followed by KD recovery (``distill``);
- ``fisher-s2`` / ``-s4`` / ``-s8`` (``+r``: with recovery): ``--speedup 2/4/8`` on the CPU target
  (latency table instead of FLOPs), measured speedups;
- ``mag-s2``: magnitude-structured pruning at the 2x cut, the best *training* method;
- ``mag90`` / ``mag97``: unstructured gradual magnitude (per matrix, KD) at 90% / 97%;
- ``fisher-s2i+r`` / ``-s1.5i+r``: ``--speedup 2`` / ``1.5`` over dense INT8, structures timed as INT8;
- ``fisher-f2+rh`` / ``+ra`` / ``+rl``: recovery ablations at the 2x cut (hidden-state MSE,
  one augmented copy per sentence, LR 1e-4), read on dev to choose the defaults;
- ``+v``: the point with task-vocabulary pruning (file-size axis; its INT8 row quantizes the
  smaller embedding table too).
- ``kd-s2i`` / ``kd-s2i+l``: what ``compress run --speedup 2 --recover`` runs (the CLI's
  ``max_length=64`` in the search too), with the default recovery and with ``--recover-steps
  1000``; ``cap-s2i`` / ``sparsebert-s2i``: what ``--speedup 2 --method cap|sparsebert
  --granularity structured`` runs: the same search (``search_only``: the structure, weights
  untouched), then the seed method trains from the **pre-trained** model to that structure (its
  default 3 epochs) and ``strip``. Does the seed method beat plain KD at the searched structure?

INT8 rows are ``quantize{mode=dynamic}``: ONNX Runtime's ``quantize_dynamic`` defaults, embeddings
included, the same call as the dense INT8 baseline. With ``--fused`` every cell also gets an ``int8f`` row: the
fp32 export through ``ort-fuse`` (ONNX Runtime's transformer fusions) and then the same call (the
leaner INT8 graph of issue 28), timed beside the others; its speedups are still over plain dense INT8.
``kd-s2f`` is ``--quantize fused --speedup 2``: the search times structures fused and quantized
(``fisher{precision=int8f}``), so its ``int8f`` row is the deployment.

Data: the rotten-tomatoes train split (split by movie from eval) less a dev split carved from it
(grouped by movie, stratified, seeded): every selection (epoch, checkpoint) is made on dev; the
reported accuracy is on the eval split, never used to choose. Latency: ONNX Runtime CPU EP, the
cell's fp32 and INT8 models timed interleaved with the dense fp32 and dense INT8 models in one
profile, batches of real eval texts at batch 1 and 8 (p50), so every ratio is side by side.

    python benchmarks/frontier.py                       # every point, 2 seeds (hours on 2 cores)
    python benchmarks/frontier.py --points dense,fisher-f2 --seeds 0
    python benchmarks/frontier.py --render              # tables and plot from the JSON
    python benchmarks/frontier.py --seeds 1 --out /tmp/s1 ...; python benchmarks/frontier.py --merge /tmp/s1

Each finished cell is written to ``<out>/frontier.json`` at once (a killed run continues where it
stopped; a cell whose spec changed runs again). Teachers are cached in ``<out>/.cache``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("frontier")

MAX_LENGTH = 64
RECOVER = "distill"
SEARCH_S2I = f"fisher{{speedup=2,precision=int8,max_length={MAX_LENGTH}}}"
# point -> the torch passes after the fine-tuned teacher (the CLI's defaults otherwise).
POINTS: dict[str, str] = {
    "dense": "",
    "drop3": f"layer-drop{{keep=3}},{RECOVER}",
    "drop2": f"layer-drop{{keep=2}},{RECOVER}",
    "fisher-f2": "fisher{flops=0.5}",
    "fisher-f2+r": f"fisher{{flops=0.5}},{RECOVER}",
    "fisher-f4+r": f"fisher{{flops=0.25}},{RECOVER}",
    "fisher-f8+r": f"fisher{{flops=0.125}},{RECOVER}",
    "fisher-s2": "fisher{speedup=2}",
    "fisher-s2+r": f"fisher{{speedup=2}},{RECOVER}",
    "fisher-s4": "fisher{speedup=4}",
    "fisher-s4+r": f"fisher{{speedup=4}},{RECOVER}",
    "fisher-s8": "fisher{speedup=8}",
    "fisher-s8+r": f"fisher{{speedup=8}},{RECOVER}",
    "mag-s2": "magnitude{granularity=structured,sparsity=0.5},strip",
    "mag90": "magnitude{sparsity=0.9}",
    "mag97": "magnitude{sparsity=0.97}",
    "fisher-s2+r+v": f"fisher{{speedup=2}},{RECOVER},vocab-prune",
    # the deployment's precision: 2x over dense INT8, timed as INT8 (what `make demo` runs)
    "fisher-s2i+r": f"fisher{{speedup=2,precision=int8}},{RECOVER}",
    "fisher-s2i+r+v": f"fisher{{speedup=2,precision=int8}},{RECOVER},vocab-prune",
    "fisher-s1.5i+r": f"fisher{{speedup=1.5,precision=int8}},{RECOVER}",
    "fisher-s1.5i+r+v": f"fisher{{speedup=1.5,precision=int8}},{RECOVER},vocab-prune",
    "fisher-s2i+rh": "fisher{speedup=2,precision=int8},distill{kd_hidden=1}",
    # recovery ablations at the 2x FLOP cut (chosen on dev): hidden-state MSE, augmentation, LR
    "fisher-f2+rh": "fisher{flops=0.5},distill{kd_hidden=1}",
    "fisher-f2+ra": "fisher{flops=0.5},distill{augment=1}",
    "fisher-f2+rl": "fisher{flops=0.5},distill{lr=0.0001}",
    # the CLI's --speedup 2 pipelines (round 3): KD recovery, longer KD, and the seed methods
    # trained from the pre-trained model to the same searched structure
    "kd-s2i": f"{SEARCH_S2I},{RECOVER}",
    "kd-s2i+l": f"{SEARCH_S2I},{RECOVER}{{min_steps=1000}}",
    "cap-s2i": f"{SEARCH_S2I[:-1]},search_only=true}},cap{{granularity=structured,structure=searched}},strip",
    "sparsebert-s2i": f"{SEARCH_S2I[:-1]},search_only=true}},sparsebert{{granularity=structured,"
                      "structure=searched},strip",
    # issue 28's frontier: x1.5 / x3 over dense INT8, and x2 with the hidden size cut to 320
    "kd-s1.5i": f"{SEARCH_S2I.replace('speedup=2', 'speedup=1.5')},{RECOVER}",
    "kd-s3i": f"{SEARCH_S2I.replace('speedup=2', 'speedup=3')},{RECOVER}",
    "kd-s2i-h320": f"{SEARCH_S2I[:-1]},hidden=320}},hidden-prune{{width=320}},{RECOVER}{{kd_hidden=1.0}}",
    # --quantize fused --speedup 2: the structure searched on ORT-fused INT8 timings (its int8f row
    # is the deployment; run with --fused)
    "kd-s2f": f"{SEARCH_S2I.replace('precision=int8', 'precision=int8f')},{RECOVER}",
}
ORDER = tuple(POINTS)
# the headline points first: a run that is cut short still answers "does it beat dense INT8?"
RUN_FIRST = ("dense", "fisher-s2+r", "fisher-s2i+r", "fisher-f2+r", "drop3", "fisher-f2+rh", "fisher-f2+rl",
             "fisher-f2+ra", "fisher-s2", "fisher-f4+r", "drop2", "fisher-s4+r", "mag90", "fisher-f8+r",
             "fisher-s8+r", "mag97", "fisher-f2", "fisher-s4", "fisher-s8", "mag-s2", "fisher-s2+r+v",
             "fisher-s2i+r+v", "fisher-s1.5i+r", "fisher-s1.5i+r+v", "fisher-s2i+rh", "kd-s2i", "kd-s2i+l",
             "cap-s2i", "sparsebert-s2i", "kd-s1.5i", "kd-s3i", "kd-s2i-h320", "kd-s2f")
BATCHES = (1, 8)


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def cell_key(point: str, seed: int) -> str:
    return f"{point}@{seed}"


def resolved(spec: str) -> list[dict]:
    """Every option of every pass of ``spec``, defaults included: a cell runs again when a pass
    default changes, not only when the spec text does."""
    import dataclasses

    from compressor.pipeline import Pipeline
    if not spec:
        return []
    return [{"pass": p.name, **{f.name: getattr(p, f.name) for f in dataclasses.fields(p)}}
            for p in Pipeline(spec).passes]


def same_spec(stored: list[dict] | None, current: list[dict]) -> bool:
    """A finished cell still stands when its passes and every option it ran with are unchanged;
    an option added to a pass since (absent from ``stored``) runs at its default, which by design
    keeps the old behaviour, so it does not invalidate the cell."""
    if stored is None or len(stored) != len(current):
        return False
    return all(all(now.get(k, object()) == v for k, v in old.items()) for old, now in zip(stored, current))


# -- data, teacher -----------------------------------------------------------------------------
def load_data(budget: dict):
    """The CLI's data: rotten-tomatoes, a dev split carved from train (selection), eval (report)."""
    from compressor.data import load_task
    task = load_task("rotten-tomatoes", seed=budget["data_seed"])
    task = task.carve_dev(budget["dev_size"], seed=budget["data_seed"])  # None: the CLI's default
    if budget.get("max_eval"):
        task = task.subsample(max_eval=budget["max_eval"], seed=budget["data_seed"])
    return task


def make_ctx(workdir: Path, task, seed: int, teacher=None, pretrained=None, progress=False):
    from compressor.context import RunContext
    return RunContext(workdir=workdir, seed=seed, data=task, teacher=teacher, pretrained=pretrained,
                      max_length=MAX_LENGTH, progress=progress, checkpoint_every=0)


def get_teacher(task, seed: int, cache: Path, progress: bool):
    """The seed's fine-tuned dense model (the CLI's ``finetune`` defaults), cached in ``cache``."""
    import torch

    from compressor.artifact import TorchModel
    from compressor.models import load_model
    from compressor.pipeline import Pipeline
    folder = cache / f"teacher-seed{seed}-dev{len(task.dev)}"
    record_file = folder / "record.json"
    if record_file.is_file():
        tm = load_model(str(folder / "model"), num_labels=task.num_labels, label_names=task.label_names)
        return TorchModel(tm.model.eval(), tm.tokenizer, tm.info), json.loads(record_file.read_text())
    torch.manual_seed(seed)  # the classifier head
    pretrained = load_model("minilm", num_labels=task.num_labels, label_names=task.label_names)
    spec = f"finetune{{max_length={MAX_LENGTH}}}"
    with tempfile.TemporaryDirectory(prefix="frontier-teacher-") as tmp:
        ctx = make_ctx(Path(tmp), task, seed, pretrained=pretrained, progress=progress)
        t0 = time.perf_counter()
        res = Pipeline(spec).run(pretrained, ctx)
        m = res.records[0].metrics
        record = {"spec": spec, "seconds": round(time.perf_counter() - t0, 1), "steps": m.get("steps"),
                  "dev_accuracy": m.get("best_accuracy"), "epoch_kept": m.get("best_epoch"),
                  "created": _now()}
        folder.mkdir(parents=True, exist_ok=True)
        (cache / ".gitignore").write_text("*\n")
        shutil.rmtree(folder / "model", ignore_errors=True)
        shutil.copytree(Path(res.records[0].folder) / "model", folder / "model")
        record_file.write_text(json.dumps(record, indent=1))
        teacher = ctx.teacher
    return teacher, record


# -- one cell ----------------------------------------------------------------------------------
def run_cell(point: str, seed: int, task, teacher, budget: dict, progress: bool) -> dict:
    """Train the point from the seed's teacher, export fp32 and INT8, score both on eval and dev,
    profile them interleaved with dense fp32 / INT8. Returns the cell's record."""
    from compressor.evaluation import evaluate
    from compressor.onnx_utils import onnx_accuracy
    from compressor.pipeline import Pipeline
    from compressor.size_breakdown import size_breakdown

    spec = POINTS[point]
    record = {"point": point, "seed": seed, "spec": spec, "resolved": resolved(spec), "created": _now()}
    with tempfile.TemporaryDirectory(prefix=f"frontier-{point}-") as tmp:
        tmp = Path(tmp)
        tables = Path(budget["cache"]) / "latency-tables"  # one latency table for every fisher-s cell
        tables.mkdir(parents=True, exist_ok=True)
        (tmp / "latency-tables").symlink_to(tables, target_is_directory=True)
        ctx = make_ctx(tmp, task, seed, teacher=teacher, progress=progress)
        t0 = time.perf_counter()
        model, records = teacher, []
        if spec:
            pipeline = Pipeline(spec)
            res = pipeline.run(_start(pipeline, seed, task, ctx) or teacher, ctx)
            model, records = res.artifact, res.records
        record["train_seconds"] = round(time.perf_counter() - t0, 1)
        record["steps"] = [{"name": r.name, "seconds": r.seconds, **_keep(r.metrics)} for r in records]
        record["dev_accuracy_torch"] = evaluate(model.model, model.tokenizer, task.dev, MAX_LENGTH)
        fp32 = Pipeline("export").run(model, ctx, first_index=90).artifact
        kept = Path(budget["cache"]) / "cells" / cell_key(point, seed)  # for later INT8 variants (int8.py --cells)
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(fp32.folder, kept)
        rows = {"fp32": fp32.path, **int8_rows(fp32, tmp, seed, bool(budget.get("fused")))}
        for label, path in rows.items():
            record[label] = {"accuracy": onnx_accuracy(path.parent, task.eval, max_length=MAX_LENGTH),
                             "dev_accuracy": onnx_accuracy(path.parent, task.dev, max_length=MAX_LENGTH),
                             "size_bytes": path.stat().st_size, "size": size_breakdown(path)}
        profile_cell(record, rows, budget["dense_onnx"][seed], task, seed, budget)
    record["seconds"] = round(time.perf_counter() - t0, 1)
    gc.collect()
    return record


def int8_rows(fp32, tmp: Path, seed: int, fused: bool) -> dict:
    """label -> model.onnx of ``fp32``'s INT8 rows: ``int8`` (``quantize{mode=dynamic}``, the dense
    INT8 baseline's call) and, if ``fused``, ``int8f`` (the leaner graph: ORT's transformer fusions,
    then the same call; choose-deploy's fused-dynamic variant)."""
    from compressor.pipeline import Pipeline
    from passes.choose_deploy import variant_steps
    rows = {"int8": Pipeline(f"quantize{{mode=dynamic,max_length={MAX_LENGTH}}}").run(
        fp32, make_ctx(tmp, None, seed), first_index=91).artifact.path}
    if fused:
        rows["int8f"] = Pipeline(",".join(variant_steps("fused-dynamic", MAX_LENGTH))).run(
            fp32, make_ctx(tmp, None, seed), first_index=92).artifact.path
    return rows


def _start(pipeline, seed: int, task, ctx):
    """The pre-trained model (its head seeded as the teacher's was) when the pipeline's method
    starts from it (cap, sparsebert: ``starts_from``), as ``compress run`` does; set as
    ``ctx.pretrained`` too. None: the pipeline starts from the fine-tuned teacher."""
    import torch

    from compressor.models import load_model
    from compressor.pass_base import PRETRAINED
    if not any(getattr(p, "is_method", False) and p.starts_from == PRETRAINED for p in pipeline.passes):
        return None
    torch.manual_seed(seed)  # the classifier head, as get_teacher's
    ctx.pretrained = load_model("minilm", num_labels=task.num_labels, label_names=task.label_names)
    return ctx.pretrained


def profile_cell(record: dict, rows: dict, dense: dict, task, seed: int, budget: dict) -> None:
    """Time the cell's ``rows`` (label -> model.onnx) interleaved with the seed's dense fp32 and INT8
    models on batches of real eval texts; p50s and speedups (from each text's median averaged over
    the texts, as the report's; cells timed before 2026-12-06 18:00 used the p50) go into ``record``."""
    from compressor.onnx_utils import folder_tokenizer
    from compressor.profiling import model_real_batches, speed_ms
    from targets.cpu import CpuTarget
    models = {"dense": dense["fp32"], "dense-int8": dense["int8"], **rows}
    dense_tok = folder_tokenizer(Path(dense["fp32"]).parent)
    real = model_real_batches(models, dense_tok, task.eval, BATCHES, MAX_LENGTH, seed)
    profiles = CpuTarget(threads=budget["threads"]).profile(models, batch_sizes=(), seq_lens=(),
                                                           runs=budget["runs"], real_inputs=real)
    p50 = {(p.model, p.batch): p.p50_ms for p in profiles}
    ms = {(p.model, p.batch): speed_ms(p) for p in profiles}  # what the report's speedups use
    record["p50_ms"] = {f"{m}@b{b}": p50[(m, b)] for m in models for b in BATCHES}
    record["typical_ms"] = {f"{m}@b{b}": ms[(m, b)] for m in models for b in BATCHES}
    record["profiled"] = _now()
    for label in rows:
        record[label]["p50_ms"] = {f"b{b}": p50[(label, b)] for b in BATCHES}
        record[label]["speedup_vs_dense"] = {f"b{b}": ms[("dense", b)] / ms[(label, b)] for b in BATCHES}
        record[label]["speedup_vs_dense_int8"] = {f"b{b}": ms[("dense-int8", b)] / ms[(label, b)]
                                                  for b in BATCHES}


def reprofile(data: dict, task, budget: dict, cache: Path, points=None) -> None:
    """Time every cell (of ``points``, if given) again from its kept fp32 export (and the same INT8
    quantizations), one cell after another on a machine with nothing else running: the cells were
    timed as they finished, some beside other work. The first timings stay in ``first_profile``."""
    from compressor.artifact import OnnxModel
    for key, record in sorted(data["cells"].items(), key=lambda kv: (ORDER.index(kv[1]["point"]), kv[0])):
        if points and record["point"] not in points:
            continue
        seed = record["seed"]
        dense = dense_onnx(task, None, seed, cache)
        kept = cache / "cells" / key
        if record["point"] == "dense":
            rows = {"fp32": dense["fp32"], "int8": dense["int8"]}
        elif (kept / "model.onnx").is_file():
            with tempfile.TemporaryDirectory(prefix="frontier-reprofile-") as tmp:
                rows = {"fp32": kept / "model.onnx", **int8_rows(OnnxModel(kept), Path(tmp), seed, "int8f" in record)}
                _reprofile_one(record, rows, dense, task, budget)
            continue
        else:
            log.warning("cell %s has no kept export: not re-timed (rerun it with --rerun)", key)
            continue
        _reprofile_one(record, rows, dense, task, budget)


def _reprofile_one(record, rows, dense, task, budget) -> None:
    first = {k: record.get(k) for k in ("p50_ms", "profiled")}
    first.update({f"{label}_{k}": record[label].get(k) for label in rows
                  for k in ("p50_ms", "speedup_vs_dense", "speedup_vs_dense_int8")})
    record.setdefault("first_profile", first)
    profile_cell(record, rows, dense, task, record["seed"], budget)
    log.info("re-timed %s@%s: int8 x%.2f dense INT8 at b1", record["point"], record["seed"],
             record["int8"]["speedup_vs_dense_int8"]["b1"])


def _keep(metrics: dict) -> dict:
    keys = ("heads_kept", "ffn_kept", "neurons_kept", "encoder_flops_reduction", "predicted_speedup",
            "sparsity", "dev_accuracy", "epochs", "steps", "epoch_kept", "loss", "layers_kept",
            "vocab_before", "vocab_after", "seconds", "train_seconds", "accuracy")
    return {k: metrics[k] for k in keys if k in metrics}


def dense_onnx(task, teacher, seed: int, cache: Path) -> dict:
    """The seed's dense fp32 and INT8 ONNX files (cached beside the teacher)."""
    from compressor.pipeline import Pipeline
    folder = cache / f"dense-onnx-seed{seed}-dev{len(task.dev)}"
    fp32, int8 = folder / "fp32" / "model.onnx", folder / "int8" / "model.onnx"
    if not (fp32.is_file() and int8.is_file()):
        shutil.rmtree(folder, ignore_errors=True)
        ctx = make_ctx(folder, None, seed)
        ctx.step_dir = folder / "fp32"
        exported = Pipeline("export").passes[0](teacher, ctx).artifact
        ctx.step_dir = folder / "int8"
        Pipeline("quantize{mode=dynamic}").passes[0](exported, ctx)
    return {"fp32": fp32, "int8": int8}


# -- results -----------------------------------------------------------------------------------
def load_results(path: Path, budget: dict) -> dict:
    if path.is_file():
        data = json.loads(path.read_text())
        if data.get("budget") == budget:
            return data
        raise SystemExit(f"{path} holds results of another budget ({data.get('budget')}): use another "
                         "--out folder, or delete the file to start over")
    return {"budget": budget, "cells": {}, "teachers": {}}


def summarize(data: dict) -> dict:
    """Per point and precision: mean and spread over seeds of accuracy, % of dense, gap closed,
    size, p50 and speedups (dense = the same seed's dense fp32 cell)."""
    from compressor.metrics import gap_closed
    cells, majority = data["cells"], data.get("majority")
    out = {}
    for point in ORDER:
        for prec in ("fp32", "int8", "int8f"):
            rows = []
            for key, c in cells.items():
                if c["point"] != point or prec not in c:
                    continue
                d = cells.get(cell_key("dense", c["seed"]))
                if d is None:
                    continue
                acc, dacc = c[prec]["accuracy"], d["fp32"]["accuracy"]
                rows.append({"acc": acc, "dev": c[prec].get("dev_accuracy"), "pct": 100 * acc / dacc,
                             "gap": gap_closed(acc, dacc, majority),
                             "mb": c[prec]["size_bytes"] / 1e6, "b1": c[prec]["p50_ms"]["b1"],
                             "b8": c[prec]["p50_ms"]["b8"],
                             "x_b1": c[prec]["speedup_vs_dense"]["b1"], "x_b8": c[prec]["speedup_vs_dense"]["b8"],
                             "xi_b1": c[prec]["speedup_vs_dense_int8"]["b1"],
                             "xi_b8": c[prec]["speedup_vs_dense_int8"]["b8"]})
            if rows:
                out[f"{point}/{prec}"] = {k: (statistics.mean(r[k] for r in rows),
                                              statistics.pstdev(r[k] for r in rows) if len(rows) > 1 else 0.0,
                                              len(rows)) for k in rows[0] if rows[0][k] is not None}
    return out


def render_markdown(data: dict) -> str:
    b, s = data["budget"], summarize(data)
    seeds = sorted({c["seed"] for c in data["cells"].values()})
    lines = ["# Frontier: all-MiniLM-L6-v2 on rotten-tomatoes, ONNX Runtime CPU EP", "",
             f"Train {data.get('train_size', '?')} rows (the train split less a {data.get('dev_size', '?')}-row dev split, "
             f"grouped by movie), eval {data.get('eval_size', '?')} rows; majority class "
             f"{data.get('majority', 0):.4f}. Seeds {', '.join(map(str, seeds))} (mean ± spread over "
             f"seeds; each seed has its own teacher). Latency: p50 of batches of real eval texts, "
             f"{b['threads']} threads, {b['runs']} interleaved rounds with dense fp32 and dense INT8.", "",
             "| point | prec | dev accuracy (chooses) | accuracy | % of dense | gap closed | MB | p50 b1 ms | p50 b8 ms | × dense b1 | "
             "× dense INT8 b1 | × dense INT8 b8 | seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def f(v, digits=2, scale=1.0, pct=False):
        mean, sd, _ = v
        text = f"{mean * scale:.{digits}f}"
        return text + (f" ± {sd * scale:.{digits}f}" if sd else "") + ("%" if pct else "")
    for key, v in s.items():
        point, prec = key.split("/")
        collapse = v["gap"][0] is not None and v["gap"][0] < 0.05
        dev = f(v["dev"], 4) if "dev" in v else "–"
        lines.append(f"| {point} | {prec} | {dev} | {f(v['acc'], 4)} | {f(v['pct'], 1, pct=True)} | "
                     f"{f(v['gap'], 1, 100, True)}{' (collapse)' if collapse else ''} | {f(v['mb'], 1)} | "
                     f"{f(v['b1'])} | {f(v['b8'])} | {f(v['x_b1'])} | {f(v['xi_b1'])} | {f(v['xi_b8'])} | "
                     f"{v['acc'][2]} |")
    ran = [p for p in ORDER if any(c["point"] == p for c in data["cells"].values())]
    lines += ["", "Points (the passes after the seed's fine-tuned teacher; INT8 rows add `quantize{mode=dynamic}`):", "",
              "| point | passes |", "|---|---|"]
    lines += [f"| {p} | `{POINTS[p] or '(the teacher itself)'}` |" for p in ran]
    stopped = sorted(data.get("stopped", {}).values(), key=lambda r: (ORDER.index(r["point"]), r["seed"]))
    if stopped:
        lines += ["", "Cells stopped by the training collapse guard (no model to export or time; a collapse "
                  "is a result):", "", "| point | seed | why |", "|---|---|---|"]
        lines += [f"| {r['point']} | {r['seed']} | {r['reason'].replace('|', '/')} |" for r in stopped]
    lines += ["", f"Command: `{data.get('command', '')}`; machine: {data.get('machine', {}).get('platform', '?')}, "
              f"{data.get('machine', {}).get('cpu_count', '?')} CPUs.", ""]
    return "\n".join(lines)


def plot(data: dict, path: Path) -> None:
    """Accuracy against the speedup over dense INT8 at batch 8 (measured side by side in one
    profile, so it holds on a noisy machine where absolute p50s do not; batch-1 INT8 p50s of 1-7 ms
    are bimodal on the 2-core VM) and against file size."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    s = summarize(data)
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for i, (key, v) in enumerate(s.items()):
        point, prec = key.split("/")
        base = point == "dense" or point.startswith("drop")
        style = dict(marker="s" if base else "o", mfc="none" if prec == "fp32" else None, capsize=2,
                     color="k" if point == "dense" else ("grey" if base else f"C{i % 10}"))
        for ax, x in zip(axes, ("xi_b8", "mb")):
            ax.errorbar(v[x][0], v["acc"][0], xerr=v[x][1], yerr=v["acc"][1], **style)
            if prec == "int8" or point == "dense":  # fp32 twins sit beside their INT8 point
                ax.annotate(f"{point} {prec}", (v[x][0], v["acc"][0]), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")
    for ax in axes:
        if data.get("majority"):
            ax.axhline(data["majority"], color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.grid(alpha=0.3)
    axes[0].axvline(1.0, color="k", linewidth=0.8)
    axes[0].set_xlabel("speedup over dense INT8, batches of 8 real texts (CPU EP, log scale)")
    axes[1].set_xlabel("ONNX file MB (log scale)")
    axes[0].set_ylabel("accuracy (eval split; dotted: majority class)")
    fig.suptitle("MiniLM-L6 / rotten-tomatoes frontier (squares: dense and layer-dropped baselines; "
                 "hollow: fp32, filled: INT8)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_outputs(data: dict, stem: Path) -> str:
    from compressor.artifact import atomic_write_text
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, default=str))
    md = render_markdown(data)
    atomic_write_text(stem.with_suffix(".md"), md)
    try:
        plot(data, stem.with_suffix(".png"))
    except Exception as exc:  # the numbers matter more than the picture
        log.warning("no plot: %s", exc)
    return md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", default="", help=f"comma list of {', '.join(ORDER)} (default: all)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--dev-size", type=int, default=0, help="dev rows (0: the CLI's default)")
    ap.add_argument("--max-eval", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--fused", action="store_true",
                    help="add an int8f row per cell: ort-fuse (fused attention, SkipLayerNorm, ...) then dynamic INT8")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--progress", action="store_true")
    ap.add_argument("--render", action="store_true", help="only rewrite the table and plot from the JSON")
    ap.add_argument("--merge", default="", help="comma list of other --out folders (same budget, e.g. one per "
                    "seed run side by side): add their cells and teachers to this one's JSON, then render")
    ap.add_argument("--rerun", action="store_true", help="run the --points cells again even if they finished")
    ap.add_argument("--reprofile", action="store_true",
                    help="only time the finished cells (of --points, if given) again from their kept exports (on a quiet machine)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    for noisy in ("urllib3", "accelerate", "compressor.models"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stem = Path(args.out).resolve() / "frontier"  # absolute: cells symlink into the cache
    if args.render or args.merge:
        data = json.loads(stem.with_suffix(".json").read_text())
        for other in (Path(o) / "frontier.json" for o in args.merge.split(",") if o):
            more = json.loads(other.read_text())
            if more["budget"] != data["budget"]:
                raise SystemExit(f"{other} holds results of another budget ({more['budget']}): not merged")
            data["cells"].update(more["cells"])
            data["teachers"].update(more["teachers"])
            data.setdefault("stopped", {}).update(more.get("stopped", {}))
        print(write_outputs(data, stem))
        return 0
    from compressor.data import DEV_FRACTION, DEV_MAX
    from compressor.metrics import majority_accuracy
    asked = [p for p in args.points.split(",") if p]
    points = asked or list(RUN_FIRST)
    for p in points:
        if p not in POINTS:
            ap.error(f"unknown point {p!r}: choose from {', '.join(ORDER)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    budget = {"model": "minilm", "task": "rotten-tomatoes", "dev_size": args.dev_size or None,
              "dev_default": f"{DEV_FRACTION:g} of train, at most {DEV_MAX}",
              "data_seed": 0, "max_eval": args.max_eval, "threads": args.threads, "runs": args.runs,
              "max_length": MAX_LENGTH, **({"fused": True} if args.fused else {})}  # seeds are per cell: runs with other --seeds share the file
    data = load_results(stem.with_suffix(".json"), budget)
    from compressor.report import machine_info
    data["machine"], data["command"] = machine_info(), " ".join(["python", *sys.argv])
    task = load_data(budget)
    data.update(train_size=len(task.train), dev_size=len(task.dev), eval_size=len(task.eval),
                majority=majority_accuracy(task.eval))
    cache = stem.parent / ".cache"
    progress = args.progress or sys.stderr.isatty()
    budget_run = dict(budget, dense_onnx={}, cache=str(cache))
    if args.reprofile:
        reprofile(data, task, dict(budget, cache=str(cache)), cache,
                  points=asked or None)
        print(write_outputs(data, stem))
        return 0
    todo = [(p, s) for p in points for s in seeds  # both seeds of a point before the next point
            if args.rerun or not same_spec(data["cells"].get(cell_key(p, s), {}).get("resolved"),
                             json.loads(json.dumps(resolved(POINTS[p]))))]
    log.info("%d cell(s) to run", len(todo))
    from compressor.errors import CollapseError
    teachers = {}
    for i, (point, seed) in enumerate(todo, 1):
        if seed not in teachers:
            teachers[seed], data["teachers"][str(seed)] = get_teacher(task, seed, cache, progress)
            budget_run["dense_onnx"][seed] = dense_onnx(task, teachers[seed], seed, cache)
        log.info("cell %d/%d: %s seed %d", i, len(todo), point, seed)
        try:
            rec = run_cell(point, seed, task, teachers[seed], budget_run, progress)
        except CollapseError as exc:  # the training guard stopped it: a result, not a crash
            data.setdefault("stopped", {})[cell_key(point, seed)] = {"point": point, "seed": seed,
                                                                     "reason": str(exc), "at": _now()}
            write_outputs(data, stem)
            log.warning("cell %s seed %d stopped: %s", point, seed, exc)
            continue
        data.setdefault("stopped", {}).pop(cell_key(point, seed), None)
        data["cells"][cell_key(point, seed)] = rec
        write_outputs(data, stem)
        log.info("cell %s seed %d: fp32 %.4f, int8 %.4f, %.0f s", point, seed, rec["fp32"]["accuracy"],
                 rec["int8"]["accuracy"], rec["seconds"])
    print(write_outputs(data, stem))
    return 0


if __name__ == "__main__":
    sys.exit(main())
