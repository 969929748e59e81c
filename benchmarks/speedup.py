"""Speedup of structured pruning on ONNX Runtime's CPU EP: dense vs presets that remove 50%,
75%, 90% and 97% of the encoder parameters unevenly across layers, each exported plain, fused
(``ort-fuse``), INT8 (``quantize``, dynamic) and fused + INT8; plus, when Optimum is installed,
the dense model exported and optimized by Optimum (``ORTOptimizer``, level O2), what a user
would otherwise pick.

Per model family (bert-base shape with random weights; the real all-MiniLM-L6-v2) every variant
is timed in one ``CpuTarget.profile`` call (all sessions loaded together, rounds interleaved,
median of ``--runs`` runs after warm-up) at batch 1 and 8, sequence 128. Peak memory is the
resident-set high-water mark of a separate process that loads the one model and runs it at the
largest batch. Columns: encoder parameters removed, encoder FLOP reduction (dense / pruned,
seq 128), speedup over the dense plain export, speedup / FLOP reduction, file size, peak memory.

    python benchmarks/speedup.py            # full run (20-40 min on 2 cores)
    python benchmarks/speedup.py --quick    # MiniLM, 50% and 90% presets, 10 runs (~2-3 min)

``--hidden 640,512`` (or fractions ``0.833,0.667``) also times every preset narrowed to those hidden
widths (the family adapter's ``keep_hidden``, as ``fisher``'s latency table does; the FLOP cut
counts the narrower hidden) and adds a table per family: FLOP cut, fp32 and INT8 speedup over
dense INT8 and INT8 speedup / FLOP cut (the aim: >= 0.8 up to a 10x cut); ``--variants plain,int8``
skips the fused exports. Writes ``speedup-hidden.json`` / ``.md`` then.

Writes ``benchmarks/results/speedup[-quick].json`` and ``.md`` and prints the tables.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _models  # noqa: E402

log = logging.getLogger("speedup")
VARIANTS = ("plain", "fused", "int8", "fused-int8")
OPTIMUM = "optimum-O2"
BASELINE = "dense/plain"

PEAK_CODE = """
import sys
from targets._io import make_feeds, make_token_arrays, read_rss_mb
from targets.cpu import CpuTarget
path, batch, seq, threads, vocab = sys.argv[1], *map(int, sys.argv[2:6])
if path != "-":
    sess = CpuTarget(threads=threads).session(path)
    feeds = make_feeds(sess, make_token_arrays(batch, seq, vocab, 0))
    for _ in range(3):
        sess.run(None, feeds)
print(read_rss_mb()["peak"])
"""


def hidden_widths(hidden: int, text: str | None) -> list[int]:
    """The hidden widths of ``--hidden`` for a family of ``hidden`` units, widest first, the full width
    always (the dense baselines): widths, or fractions (<= 1) of ``hidden``, rounded to multiples of
    16 as ``hidden-prune`` rounds them."""
    from passes.hidden_prune import target_width
    asked = [float(v) for v in (text or "").split(",") if v.strip()]
    return sorted({hidden} | {target_width(hidden, round(v * hidden if v <= 1 else v)) for v in asked}, reverse=True)


def presets(dense, removes, widths, seed: int):
    """``(tag, model, facts)`` per removal preset (dense first) and hidden width; a narrower width
    keeps the preset's first hidden units (:func:`_models.narrowed`)."""
    full = widths[0]
    for remove in (0.0, *removes):
        base = "dense" if remove == 0 else f"-{round(remove * 100)}%"
        if remove == 0:
            preset, info = dense, {"remove_target": 0.0, **_models.reductions(dense.model, dense.model)}
        else:
            preset, info = _models.structured_preset(dense, remove, seed)
        for width in widths:
            if width == full:
                yield base, preset, {**info, "hidden": full}
            else:
                yield f"{base}-h{width}", *_models.narrowed(dense, preset, width, info)


def build_family(name: str, dense, removes, workdir: Path, seed: int, optimum: bool, widths=None,
                 kinds=VARIANTS) -> tuple[dict, dict]:
    """Export the variants ``kinds`` of every preset and hidden width of one family:
    ``({label: onnx path}, {label: facts})``."""
    from compressor.context import RunContext
    from passes.export_onnx import Export
    from passes.families import family_of
    from passes.ort_fusion import OrtFuse
    from passes.quantize import Quantize

    paths, facts = {}, {}
    for tag, model, info in presets(dense, removes, widths or [family_of(dense.model).hidden_size()], seed):
        ctx = RunContext(workdir / name / tag.strip("-%"), seed=seed)
        steps = {}

        def step(label, p, art):
            ctx.step_dir = ctx.workdir / label
            t0 = time.perf_counter()
            res = p(art, ctx)
            steps[label] = {"seconds": round(time.perf_counter() - t0, 1), **res.metrics}
            return res.artifact

        plain = step("plain", Export(), model)
        variants = {"plain": plain}
        if "fused" in kinds or "fused-int8" in kinds:
            variants["fused"] = step("fused", OrtFuse(strict=False), plain)  # what does not fuse is recorded
        if "int8" in kinds:
            variants["int8"] = step("int8", Quantize(), plain)
        if "fused-int8" in kinds:
            variants["fused-int8"] = step("fused-int8", Quantize(), variants["fused"])
        fusion = steps.get("fused", {})
        for variant, art in variants.items():
            if variant not in kinds:
                continue
            label = f"{tag}/{variant}"
            paths[label] = art.path
            facts[label] = {**info, "preset": tag, "variant": variant,
                            "fused_ops": fusion.get("fused_ops", {}) if "fused" in variant else {},
                            "attention_per_layer": fusion.get("attention_per_layer"),
                            "not_fused": fusion.get("problems") or fusion.get("not_fused") or [],
                            "step": {k: _brief(v) for k, v in steps.items() if k == variant}}
        log.info("%s %s: encoder params removed %.3f, FLOP reduction %.2fx, fused %s", name, tag,
                 info["encoder_params_removed"], info["flop_reduction"], fusion.get("fused_ops"))
        if model is not dense:
            del model
    if optimum:
        path = optimum_o2(dense, workdir / name / "optimum")
        if path is not None:
            paths[OPTIMUM] = path
            facts[OPTIMUM] = {**facts["dense/plain"], "preset": "dense", "variant": OPTIMUM,
                              "fused_ops": _fused_counts(path), "step": {}}
    return paths, facts


def _brief(metrics: dict) -> dict:
    keys = ("seconds", "max_abs_diff", "fused_ops", "quant_ops", "size_bytes")
    return {k: metrics[k] for k in keys if k in metrics}


def _fused_counts(path) -> dict:
    import onnx

    from passes import _onnx_graph as og
    counts = og.op_counts(onnx.load(str(path), load_external_data=False).graph)
    return {k: v for k, v in counts.items() if k in og.FUSED_OPS and k != "LayerNormalization"}


def optimum_o2(dense, folder: Path):
    """Optimum's export + ORTOptimizer O2 of the dense model; None when Optimum is missing."""
    try:
        from optimum.onnxruntime import ORTModelForSequenceClassification, ORTOptimizer
        from optimum.onnxruntime.configuration import AutoOptimizationConfig
    except ImportError:
        log.info("optimum is not installed: no Optimum O2 baseline")
        return None
    src = folder / "hf"
    dense.model.save_pretrained(src)
    dense.tokenizer.save_pretrained(src)
    ort_model = ORTModelForSequenceClassification.from_pretrained(src, export=True)
    ORTOptimizer.from_pretrained(ort_model).optimize(AutoOptimizationConfig.O2(), save_dir=folder / "o2")
    return folder / "o2" / "model_optimized.onnx"


def peak_rss(path, batch: int, seq: int, threads: int, vocab: int) -> float:
    """Peak resident MB of a fresh process that loads ``path`` ("-": nothing) and runs it."""
    out = subprocess.run([sys.executable, "-c", PEAK_CODE, str(path), str(batch), str(seq), str(threads),
                          str(vocab)], capture_output=True, text=True, check=True, cwd=HERE.parent)
    return round(float(out.stdout.strip().splitlines()[-1]), 1)


def rows_for(facts: dict, profiles: list, peaks: dict) -> list[dict]:
    """One row per model: facts + per-shape p50 / speedup / speedup per FLOP reduction."""
    from compressor.profiling import shape_key, speedups
    ratio = speedups(profiles, baseline=BASELINE).get("cpu", {})
    rows = []
    for label, f in facts.items():
        row = {"model": label, **{k: v for k, v in f.items() if k != "step"}, "step": f.get("step", {}),
               "peak_rss_mb": peaks.get(label), "shapes": {}}
        for p in profiles:
            if p.model != label:
                continue
            key = shape_key(p.batch, p.seq_len)
            speed = 1.0 if label == BASELINE else ratio.get(label, {}).get(key)
            per_flop = round(speed / f["flop_reduction"], 3) if speed else None
            row["size_bytes"] = p.size_bytes
            row["shapes"][key] = {"p50_ms": round(p.p50_ms, 3), "p90_ms": round(p.p90_ms, 3),
                                  "speedup": round(speed, 3) if speed else None,
                                  "speedup_per_flop_reduction": per_flop}
        rows.append(row)
    return rows


def markdown(name: str, rows: list[dict], shapes: list[str]) -> str:
    head = ["model", "enc. params removed", "FLOP red."]
    for s in shapes:
        head += [f"{s} p50 ms", f"{s} speedup", f"{s} speedup/FLOP red."]
    head += ["file MB", "peak RSS MB"]
    lines = [f"### {name}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["model"], f"{100 * r['encoder_params_removed']:.1f}%", f"{r['flop_reduction']:.2f}x"]
        for s in shapes:
            sh = r["shapes"].get(s, {})
            cells += [f"{sh.get('p50_ms', float('nan')):.2f}", f"{sh.get('speedup') or 0:.2f}x",
                      f"{sh.get('speedup_per_flop_reduction') or 0:.2f}"]
        cells += [f"{r.get('size_bytes', 0) / 1e6:.1f}", f"{r['peak_rss_mb'] or 0:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cut_rows(rows: list[dict], shapes: list[str], reference: str = "dense/int8") -> list[dict]:
    """Per (preset, hidden width): the FLOP cut (dense / pruned encoder FLOPs, narrower hidden
    counted), and per shape the fp32 (plain) and INT8 speedups over ``reference`` and INT8 speedup
    / FLOP cut (the aim: >= 0.8 up to a 10x cut)."""
    by = {r["model"]: r for r in rows}
    if reference not in by:
        return []
    out = []
    for r in rows:
        fp32 = by.get(f"{r['preset']}/plain")
        if r["variant"] != "int8" or fp32 is None:
            continue
        row = {"preset": r["preset"], "hidden": r.get("hidden"), "flop_cut": round(r["flop_reduction"], 3)}
        for s in shapes:
            ref = by[reference]["shapes"][s]["p50_ms"]
            int8 = ref / r["shapes"][s]["p50_ms"]
            row[s] = {"fp32_speedup": round(ref / fp32["shapes"][s]["p50_ms"], 3), "int8_speedup": round(int8, 3),
                      "int8_speedup_per_flop_cut": round(int8 / r["flop_reduction"], 3)}
        out.append(row)
    return out


def cut_markdown(cuts: list[dict], shapes: list[str]) -> str:
    head = ["preset", "hidden", "FLOP cut"]
    for s in shapes:
        head += [f"{s} fp32 / dense INT8", f"{s} INT8 / dense INT8", f"{s} INT8 speedup / FLOP cut"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in cuts:
        cells = [c["preset"], str(c["hidden"]), f"{c['flop_cut']:.2f}x"]
        for s in shapes:
            cells += [f"{c[s]['fp32_speedup']:.2f}x", f"{c[s]['int8_speedup']:.2f}x",
                      f"{c[s]['int8_speedup_per_flop_cut']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fastest(rows: list[dict], shapes: list[str]) -> dict:
    """Per shape: the fastest model overall and the fastest variant of each preset."""
    out = {}
    for s in shapes:
        timed = [r for r in rows if s in r["shapes"]]
        best = {}
        for r in timed:
            cur = best.get(r["preset"])
            if cur is None or r["shapes"][s]["p50_ms"] < cur["shapes"][s]["p50_ms"]:
                best[r["preset"]] = r
        overall = min(timed, key=lambda r: r["shapes"][s]["p50_ms"])
        out[s] = {"overall": overall["model"], "per_preset": {k: v["model"] for k, v in best.items()}}
    return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("onnxruntime", "onnx", "torch", "transformers", "optimum", "optimum-onnx"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="MiniLM only, presets 50%% and 90%%, 10 runs")
    ap.add_argument("--families", default=None, help="comma list of bert-base, minilm, " + ", ".join(_models.FAMILY_SHAPES))
    ap.add_argument("--removes", default=None, help="comma list of encoder fractions to remove")
    ap.add_argument("--hidden", default=None, help="comma list of hidden widths (or fractions <= 1 of the "
                    "family's) to time each preset at besides the full width, e.g. 640,512 or 0.833,0.667")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma list of " + ", ".join(VARIANTS)
                    + " (plain always)")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--runs", type=int, default=None)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="ORT intra-op threads (0 = all cores)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-optimum", action="store_true", help="skip the Optimum O2 baseline")
    ap.add_argument("--workdir", default=None, help="keep the exported models here (default: a temp dir)")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("passes", "compressor", "targets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    families = (args.families or ("minilm" if args.quick else "bert-base,minilm")).split(",")
    removes = [float(x) for x in (args.removes or ("0.5,0.9" if args.quick else "0.5,0.75,0.9,0.97")).split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    runs = args.runs or (10 if args.quick else 30)
    warmup = 3 if args.quick and args.warmup == 5 else args.warmup
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="speedup-"))
    shapes = [f"b{b}xs{args.seq}" for b in batches]
    kinds = ["plain", *(v for v in VARIANTS[1:] if v in args.variants.split(","))]

    from compressor.models import minilm_folder
    from targets.cpu import CpuTarget
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)
    target = CpuTarget(threads=args.threads)
    started = time.time()
    result = {"meta": {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "python": platform.python_version(), "versions": versions(), "runs": runs, "warmup": warmup,
        "threads": args.threads, "seq": args.seq, "batches": batches, "removes": removes, "seed": args.seed,
        "hidden": args.hidden, "variants": kinds,
        "baseline": BASELINE, "baseline_process_peak_rss_mb": peak_rss("-", 1, 1, args.threads, 100)},
        "families": {}}
    md = [f"Date {result['meta']['date']}; machine: {result['meta']['machine']}; versions "
          f"{result['meta']['versions']}; runs {runs} after {warmup} warm-up, threads {args.threads or 'all'}; "
          f"`{result['meta']['command']}`.", ""]
    try:
        for name in families:
            dense = _models.minilm(args.seed) if name == "minilm" else _models.family_base(name, tokenizer, args.seed)
            from passes.families import family_of
            widths = hidden_widths(family_of(dense.model).hidden_size(), args.hidden)
            paths, facts = build_family(name, dense, removes, workdir, args.seed, not args.no_optimum, widths, kinds)
            del dense
            log.info("%s: timing %d models at %s, %d runs", name, len(paths), shapes, runs)
            profiles = target.profile(paths, batch_sizes=batches, seq_lens=(args.seq,), warmup=warmup,
                                      runs=runs, seed=args.seed)
            peaks = {label: peak_rss(p, max(batches), args.seq, args.threads, 30522) for label, p in paths.items()}
            rows = rows_for(facts, profiles, peaks)
            summary = {"fastest": fastest(rows, shapes)}
            if OPTIMUM in paths:
                opt = next(r for r in rows if r["model"] == OPTIMUM)
                for ours in (o for o in (BASELINE, "dense/fused") if o in paths):
                    row = next(r for r in rows if r["model"] == ours)
                    summary[f"{ours} / {OPTIMUM} latency"] = {
                        s: round(row["shapes"][s]["p50_ms"] / opt["shapes"][s]["p50_ms"], 3) for s in shapes}
            cuts = cut_rows(rows, shapes)
            result["families"][name] = {"rows": rows, "summary": summary, "flop_cut": cuts}
            table = markdown(name, rows, shapes)
            if cuts:
                table += "\n\nSpeedup over dense INT8 against the FLOP cut:\n\n" + cut_markdown(cuts, shapes)
            md += [table, "", "Summary: `" + json.dumps(summary) + "`", ""]
            print(table, "\n", json.dumps(summary, indent=1), flush=True)
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["meta"]["seconds"] = round(time.time() - started)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "speedup-quick" if args.quick else "speedup-hidden" if args.hidden else "speedup"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=str))
    (out / f"{stem}.md").write_text("\n".join(md) + "\n")
    print(f"wrote {out / stem}.json and .md in {result['meta']['seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
