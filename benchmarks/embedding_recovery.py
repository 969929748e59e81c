"""Which recovery objective brings a pruned embedding model back closest to its dense self, on dev.

Starts every variant from the same pruned model (a run's ``01-fisher`` output, e.g. `make
demo-embeddings`'s ×2 structure), distils it with the ``distill`` pass on the run's training texts
labelled with the dense model's embeddings, and prints the dev fidelity (mean cosine to the dense
embeddings) per epoch and as kept. Variants: the default (``1 - cos`` to the teacher's sentence
embedding), ``kd_hidden=1`` (plus MSE on every hidden state, the teacher run per batch),
``--contrastive 0.1`` (plus in-batch InfoNCE), ``augment=1`` (a perturbed copy of every training
sentence, also labelled by the teacher). Only the dev split is read: the choice of a default
follows from these numbers, never from eval.

    .venv/bin/python benchmarks/embedding_recovery.py out/demo-embeddings [--variants default,hidden]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {"default": ({}, None), "hidden": ({"kd_hidden": 1.0}, None), "contrastive": ({}, 0.1),
            "augment": ({"augment": 1}, None)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a `compress run --task-type embeddings` folder with 01-fisher")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("-o", "--out", type=Path, default=HERE / "results" / "embedding-recovery.json")
    args = ap.parse_args(argv)

    from compressor.config import RunConfig
    from compressor.context import RunContext
    from compressor.data import load_task
    from compressor.embedder import load_source, teacher_targets
    from compressor.recipe import load_recipe
    from passes.distill.distill import Distill
    from passes.strip import load_stripped
    values = load_recipe(args.run / "recipe.yaml")
    cfg = RunConfig(**{k: v for k, v in values.items() if k in RunConfig.__dataclass_fields__})
    data = load_task(cfg.task, seed=cfg.seed, task_type="embeddings")
    data = data.carve_dev(None, seed=cfg.seed)
    dense = load_source(cfg.model)
    targets = dataclasses.replace(teacher_targets(data, dense, cfg.max_length), eval=[])  # dev only
    results = {}
    for name in args.variants.split(","):
        options, contrastive = VARIANTS[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "pruned"
            shutil.copytree(args.run / "01-fisher", folder)
            dense.tokenizer.save_pretrained(folder)
            pruned = load_stripped(folder)
            if contrastive is not None:
                pruned.model.config.compressor_embedding = {**pruned.model.config.compressor_embedding,
                                                            "contrastive": contrastive}
            ctx = RunContext(workdir=Path(tmp), seed=cfg.seed, data=targets, teacher=dense, pretrained=dense,
                             max_length=cfg.max_length, progress=False, step_dir=Path(tmp) / "step")
            t0 = time.perf_counter()
            res = Distill(max_length=cfg.max_length, **options).run(pruned, ctx)
            m = res.metrics
            results[name] = {"options": {**options, "contrastive": contrastive or 0.0},
                             "dev_fidelity_per_epoch": m["dev_accuracy_per_epoch"], "dev_fidelity_kept": m["dev_accuracy"],
                             "epochs": m["epochs"], "steps": m["steps"], "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({name: results[name]}), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"run": str(args.run), "dev_size": len(targets.dev), "variants": results}, indent=2))


if __name__ == "__main__":
    main()
