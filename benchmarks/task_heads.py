"""Every task head on real public data: all-MiniLM-L6-v2 as a regressor, a tagger and a QA reader.

Each cell is one ``compress run minilm --method fisher --speedup 2 --recover`` (INT8, the CPU EP)
on one task and seed; the run's own report gives the dense model, dense INT8 and the deployment
on the held-out eval split: the task metric with its 95% interval, the paired difference to dense
INT8 with its interval, % of dense, the speedup over dense INT8 at b1 and b32 real inputs with
intervals, and the file sizes. ``--speedup 2`` is a round number asked of every task, not tuned on
any split; every selection inside the run (epochs, the structure's tuning) uses its dev split,
carved from the training file.

Data (public copies; not committed; licences as their publishers state):

- ``sick-r``: SICK (SemEval-2014 task 1) relatedness scores, train 4,500 pairs / test 4,927
  (CC BY-NC-SA 3.0). Files ``SICK_train.txt`` and ``SICK_test_annotated.txt`` from
  github.com/brmson/dataset-sts ``data/sts/sick2014/``; given with ``--sick DIR``.
- ``wnut17``: WNUT-17 emerging entities, train 3,394 sentences / test 1,287 (CC BY 4.0), files
  ``wnut17train.conll`` and ``emerging.test.annotated`` from github.com/leondz/emerging_entities_17;
  ``--wnut DIR``. Sentences run to 191 sub-words: ``--max-length 128`` (99% fit).
- ``squad``: SQuAD v1.1 (CC BY-SA 4.0) ``train-v1.1.json`` / ``dev-v1.1.json``; ``--squad DIR``;
  subsampled with ``--max-train`` / ``--max-eval`` for 2 cores.

    python benchmarks/task_heads.py --sick /data/sick --wnut /data/wnut17 --seeds 0,1
    python benchmarks/task_heads.py --summary          # the table of the cells run so far

A cell whose report.json exists is skipped, so a killed run continues where it stopped; each cell's
full report (report.md / report.html) stays in its folder. Writes ``<out>/task-heads.json`` and
``.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
COMMON = ["minilm", "--method", "fisher", "--speedup", "2", "--recover", "--target", "cpu"]


def _sick_tsv(src: Path, name: str, dest: Path) -> Path:
    """SICK's .txt (tab-separated, header row) as a .tsv the tool reads by column names."""
    out = dest / f"{Path(name).stem}.tsv"
    if not out.exists():
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / name, out)
    return out


def task_args(task: str, args, data: Path) -> list[str]:
    if task == "sick-r":
        src = Path(args.sick)
        return ["--train", str(_sick_tsv(src, "SICK_train.txt", data)),
                "--eval", str(_sick_tsv(src, "SICK_test_annotated.txt", data)),
                "--columns", "sentence1=sentence_a,sentence2=sentence_b,label=relatedness_score",
                "--task-type", "regression"]
    if task == "wnut17":
        src = Path(args.wnut)
        return ["--train", str(src / "wnut17train.conll"), "--eval", str(src / "emerging.test.annotated"),
                "--task-type", "token-classification", "--max-length", "128"]
    if task == "squad":
        src = Path(args.squad)
        return ["--train", str(src / "train-v1.1.json"), "--eval", str(src / "dev-v1.1.json"),
                "--task-type", "question-answering", "--max-length", "256", "--seq-lens", "256",
                "--max-train", str(args.squad_train), "--max-eval", str(args.squad_eval)]
    raise SystemExit(f"unknown task {task!r}: choose sick-r, wnut17, squad")


def row(task: str, seed: int, report: dict) -> dict:
    models, versus = report["models"], report["summary"]["versus_dense_int8"]
    dense, int8, comp = models["dense"], models["dense-int8"], models["compressed"]
    speed, speed_ci = versus["speedup"]["cpu"], versus["speedup_interval"]["cpu"]
    return {
        "task": task, "seed": seed, "metric": report["data"].get("metric_name", "accuracy"),
        "dense": dense["accuracy_onnx"], "dense_int8": int8["accuracy_onnx"], "compressed": comp["accuracy_onnx"],
        "compressed_interval": comp["accuracy_interval"],
        "points_vs_int8": versus["accuracy_points"], "points_vs_int8_interval": versus["accuracy_interval"],
        "pct_of_dense": 100 * comp["accuracy_onnx"] / dense["accuracy_onnx"] if dense["accuracy_onnx"] else None,
        "speedup_b1": speed.get("b1xreal"), "speedup_b1_interval": speed_ci.get("b1xreal"),
        "speedup_b32": speed.get("b32xreal"), "speedup_b32_interval": speed_ci.get("b32xreal"),
        "mb_int8": int8["size_bytes"] / 1e6, "mb_compressed": comp["size_bytes"] / 1e6,
        "verdict": versus["verdict_kind"], "collapse": comp.get("collapse"),
        "speedup_asked": report["run"].get("speedup_asked"),
        "structure_predicted": report["run"].get("speedup_predicted"),
    }


def _ci(lo_hi, fmt) -> str:
    return "" if not lo_hi else f" ({fmt.format(lo_hi[0])}..{fmt.format(lo_hi[1])})"


def table(rows: list[dict]) -> str:
    lines = ["| task | seed | metric | dense | dense INT8 | compressed (95%) | vs INT8, points (95%) | % of dense "
             "| ×b1 over INT8 (95%) | ×b32 over INT8 (95%) | MB INT8 → ours | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['task']} | {r['seed']} | {r['metric']} | {100 * r['dense']:.2f} | {100 * r['dense_int8']:.2f} "
            f"| {100 * r['compressed']:.2f}{_ci([100 * v for v in r['compressed_interval']], '{:.1f}')} "
            f"| {r['points_vs_int8']:+.2f}{_ci(r['points_vs_int8_interval'], '{:+.2f}')} | {r['pct_of_dense']:.1f} "
            f"| {r['speedup_b1']:.2f}{_ci(r['speedup_b1_interval'], '{:.2f}')} "
            f"| {r['speedup_b32']:.2f}{_ci(r['speedup_b32_interval'], '{:.2f}')} "
            f"| {r['mb_int8']:.1f} → {r['mb_compressed']:.1f} | {r['verdict']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="sick-r,wnut17,squad")
    p.add_argument("--seeds", default="0")
    p.add_argument("--sick"), p.add_argument("--wnut"), p.add_argument("--squad")
    p.add_argument("--squad-train", type=int, default=10000)
    p.add_argument("--squad-eval", type=int, default=2000)
    p.add_argument("--out", default=str(HERE / "results" / "task-heads"))
    p.add_argument("--summary", action="store_true", help="Only print the table of the cells run so far.")
    args = p.parse_args()
    out = Path(args.out)
    sources = {"sick-r": args.sick, "wnut17": args.wnut, "squad": args.squad}
    compress = str(Path(sys.executable).with_name("compress"))
    rows = []
    for task in args.tasks.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            cell = out / f"{task}-s{seed}"
            if not (cell / "report.json").exists():
                if args.summary or not sources.get(task):
                    continue
                cmd = [compress, "run", *COMMON, *task_args(task, args, out / ".data"), "--seed", str(seed),
                       "-o", str(cell), *(["--resume"] if (cell / "recipe.yaml").exists() else [])]
                print("$", " ".join(cmd), flush=True)
                code = subprocess.run(cmd).returncode  # 3: a gate missed; the report is written
                if not (cell / "report.json").exists():
                    print(f"cell {cell.name} failed (exit {code}); its folder is kept", flush=True)
                    continue
            rows.append(row(task, seed, json.loads((cell / "report.json").read_text())))
    (out / "task-heads.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "task-heads.json").write_text(json.dumps(rows, indent=1))
    text = table(rows)
    (out / "task-heads.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
