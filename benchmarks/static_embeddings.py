"""The far end of the embedding frontier: a static-embedding model (model2vec) distilled from the same
teacher, scored with the same measures as `compress run --task-type embeddings` on the same texts.

model2vec's ``distill`` extra pins transformers < 5.4, which neither project environment has
(.venv: 4.57 for Optimum; .venv-latest: 5.x newest), so this runs in two steps in two environments:

    # 1. in the project venv: the run's texts, class labels and dense embeddings (its dense ONNX)
    .venv/bin/python benchmarks/static_embeddings.py dump out/demo-embeddings -o /tmp/static
    # 2. in a throwaway venv with model2vec: distill, embed, time, score (needs this repo on PYTHONPATH)
    python3 -m venv /tmp/m2v && /tmp/m2v/bin/pip install torch==2.13.0 "model2vec[distill]==0.10.0" scikit-learn
    PYTHONPATH=. /tmp/m2v/bin/python benchmarks/static_embeddings.py static /tmp/static --model MINILM_FOLDER

Step 2 prints one JSON line: top-10 neighbour agreement with the dense model and linear-probe
accuracy (the same functions, sample and seed as the run's report), the file size, and the time
to embed the eval texts one at a time (b1) and 32 at a time (b32), per text, on this CPU. Fidelity
(cosine to the dense embedding) does not apply: a static model's vectors live in their own space.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

PROBE_TRAIN = 2000  # as compressor.run.PROBE_TRAIN


def dump(run: Path, out: Path, seed: int = 0) -> None:
    """The run's task texts (its recipe: same dev carve, same eval), class labels, and the dense
    ONNX model's eval embeddings, to ``out``."""
    import numpy as np

    from compressor.config import RunConfig
    from compressor.data import load_task
    from compressor.onnx_utils import onnx_logits
    from compressor.recipe import load_recipe
    values = load_recipe(run / "recipe.yaml")
    cfg = RunConfig(**{k: v for k, v in values.items() if k in RunConfig.__dataclass_fields__})
    data = load_task(cfg.task if not cfg.train_file else None, cfg.train_file, cfg.eval_file, seed=cfg.seed,
                     columns=cfg.columns, task_type="embeddings")
    data = data.subsample(cfg.max_train or None, cfg.max_eval or None, seed=cfg.seed)
    data = data.carve_dev(None if not cfg.dev_size else cfg.dev_size, seed=cfg.seed)
    pick = sorted(random.Random(cfg.seed).sample(range(len(data.train)), min(PROBE_TRAIN, len(data.train))))
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"split": "train", "text": data.train[i].text, "label": data.train[i].label} for i in pick]
    rows += [{"split": "eval", "text": e.text, "label": e.label} for e in data.eval]
    (out / "texts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    np.save(out / "dense_eval.npy", onnx_logits(run / "dense", data.eval, max_length=cfg.max_length))
    print(f"wrote {len(rows)} texts and the dense eval embeddings to {out}")


def static(folder: Path, model: str, seed: int = 0) -> dict:
    """Distill a model2vec static model from ``model``, embed the dumped texts, score and time it."""
    import numpy as np
    from model2vec.distill import distill

    from compressor.embedding_metrics import neighbour_agreement, probe_accuracy
    rows = [json.loads(line) for line in (folder / "texts.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    evals = [r for r in rows if r["split"] == "eval"]
    t0 = time.perf_counter()
    m2v = distill(model_name=model)
    distill_s = time.perf_counter() - t0
    m2v.save_pretrained(str(folder / "static-model"))
    size = sum(p.stat().st_size for p in (folder / "static-model").rglob("*") if p.is_file())
    eval_texts = [r["text"] for r in evals]
    emb = m2v.encode(eval_texts)
    train_emb = m2v.encode([r["text"] for r in train])
    dense = np.load(folder / "dense_eval.npy")
    timings = {}
    for batch in (1, 32):
        t0 = time.perf_counter()
        for start in range(0, len(eval_texts), batch):
            m2v.encode(eval_texts[start:start + batch])
        timings[f"b{batch}_ms_per_text"] = 1000 * (time.perf_counter() - t0) / len(eval_texts)
    probe = probe_accuracy(train_emb, [r["label"] for r in train], emb, [r["label"] for r in evals],
                           seed=seed, samples_per_label=None)
    result = {"model": "model2vec static (distill, pca 256)", "distill_seconds": round(distill_s, 1),
              "size_bytes": size, "dimensions": int(emb.shape[1]),
              "neighbours_at_10": float(neighbour_agreement(emb, dense, k=10).mean()),
              "probe_accuracy": float(probe.mean()), "eval_texts": len(evals), **timings}
    print(json.dumps(result))
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("run", type=Path)
    d.add_argument("-o", "--out", type=Path, required=True)
    s = sub.add_parser("static")
    s.add_argument("folder", type=Path)
    s.add_argument("--model", required=True, help="the teacher's folder (e.g. MiniLM's)")
    args = ap.parse_args(argv)
    if args.cmd == "dump":
        dump(args.run, args.out)
    else:
        static(args.folder, args.model)


if __name__ == "__main__":
    main()
