"""Which recovery objective brings a pruned model back closest to its teacher, on dev.

Starts every variant from the same pruned model (a run's retraining-free step, ``01-fisher`` of
`make demo-embeddings` or ``candidates/x2/02-fisher`` of a `--max-drop` run: ``--pruned``), distils
it with the ``distill`` pass on the run's training texts, and prints the dev metric per epoch and as
kept. An embedding run's teacher is the dense model itself (its texts labelled with the dense
embeddings; the metric is the fidelity, mean cosine to them); a classifier's is the run's
fine-tuned teacher (``01-finetune/model``, or the run's ``--teacher``; the metric is dev accuracy).
Variants: the default (the KD loss ``--recover`` uses; ``1 - cos`` to the teacher's sentence
embedding for an embedding model), ``hidden`` (``kd_hidden=1``: plus MSE on every hidden state),
``contrastive`` (embeddings: plus in-batch InfoNCE 0.1), ``augment`` (``augment=1``: a perturbed
copy of every training sentence, labelled by the teacher: twice the steps), ``longer`` (the default
at twice the epochs: the same steps as ``augment``, so the two tell text from steps apart),
``augment-same-steps`` (``augment=1`` for one epoch: the default's steps and time). Only the
dev split is read: the choice of a default follows from these numbers, never from eval.

    .venv/bin/python benchmarks/recovery.py out/demo-embeddings [--variants default,hidden]
    .venv/bin/python benchmarks/recovery.py out/demo-md --pruned out/demo-md/candidates/x2/02-fisher \
        --variants default,augment,longer
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
            "augment": ({"augment": 1}, None), "longer": ({"epochs": 4}, None),
            "augment-same-steps": ({"augment": 1, "epochs": 1}, None)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="a `compress run` folder (its recipe.yaml and teacher)")
    ap.add_argument("--pruned", type=Path, help="the pruned model to recover (default: <run>/01-fisher)")
    ap.add_argument("--variants", default="default,hidden,contrastive,augment")
    ap.add_argument("-o", "--out", type=Path, help="default: results/embedding-recovery.json (embeddings), "
                    "results/recovery.json (else)")
    args = ap.parse_args(argv)

    from compressor.config import RunConfig
    from compressor.context import RunContext
    from compressor.data import load_task
    from compressor.embedder import load_source, teacher_targets
    from compressor.models import load_model
    from compressor.recipe import load_recipe
    from compressor.run import _dev_size
    from passes.distill.distill import Distill
    from passes.strip import load_stripped
    values = load_recipe(args.run / "recipe.yaml")
    cfg = RunConfig(**{k: v for k, v in values.items() if k in RunConfig.__dataclass_fields__})
    embeddings = cfg.task_type == "embeddings"
    data = load_task(cfg.task, seed=cfg.seed, task_type=cfg.task_type)
    data = data.carve_dev(_dev_size(cfg.dev_size), seed=cfg.seed)  # the run's dev split
    if embeddings:
        dense = load_source(cfg.model)
        targets = dataclasses.replace(teacher_targets(data, dense, cfg.max_length), eval=[])  # dev only
    else:
        dense = load_model(cfg.teacher or str(args.run / "01-finetune" / "model"), num_labels=data.num_labels,
                           label_names=data.label_names)
        targets = dataclasses.replace(data, eval=[])
    pruned_from = args.pruned or args.run / "01-fisher"
    out = args.out or HERE / "results" / ("embedding-recovery.json" if embeddings else "recovery.json")
    results = {}
    for name in args.variants.split(","):
        options, contrastive = VARIANTS[name]
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "pruned"
            shutil.copytree(pruned_from, folder)
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
                             "dev_metric_per_epoch": m["dev_accuracy_per_epoch"], "dev_metric_kept": m["dev_accuracy"],
                             "epochs": m["epochs"], "steps": m["steps"], "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps({name: results[name]}), flush=True)
        out.parent.mkdir(parents=True, exist_ok=True)  # per variant: a stopped run keeps its cells
        out.write_text(json.dumps({"run": str(args.run), "pruned": str(pruned_from), "dev_size": len(targets.dev),
                                   "variants": results}, indent=2))


if __name__ == "__main__":
    main()
