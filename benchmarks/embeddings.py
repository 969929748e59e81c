"""The other half of the file: how small do the bert-base and MiniLM shapes get once the embedding
table is treated too? File size only (no latency, no accuracy: random weights for bert-base).

For each model and structured preset (``_models.structured_preset``: 0%, 50%, 90%, 97% of the
encoder Linear parameters removed, unevenly across layers), the ONNX file of:

- ``fp32``: the stripped export;
- ``int8``: ``quantize{mode=dynamic}`` (ONNX Runtime's default ops: MatMuls and the embedding
  Gathers, one scale per table);
- ``vocab+int8``: ``vocab-prune`` on the rotten-tomatoes training texts (the same WordPiece
  vocabulary: all-MiniLM-L6-v2 uses bert-base-uncased's), then the same INT8;
- ``vocab+trim+int8``: also ``trim-positions{max_positions=64}`` (the deployment's max_length).

Each row splits the file into embeddings / encoder / head (``compressor.size_breakdown``) and
gives its size as a fraction of the dense fp32 file of the same model.

    python benchmarks/embeddings.py                       # bert-base and MiniLM, ~5 min on 2 cores
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import _models  # noqa: E402

VARIANTS = {"fp32": [], "int8": ["quantize{mode=dynamic}"],
            "vocab+int8": ["vocab-prune{measure_accuracy=false}", "quantize{mode=dynamic}"],
            "vocab+trim+int8": ["vocab-prune{measure_accuracy=false}", "trim-positions{max_positions=64}",
                                "quantize{mode=dynamic}"]}


def run_variant(model, steps: list[str], task, work: Path):
    """The ONNX file of ``model`` after the torch steps, export and the ONNX steps."""
    from compressor.context import RunContext
    from compressor.pipeline import Pipeline
    torch_steps = [s for s in steps if not s.startswith("quantize")]
    onnx_steps = [s for s in steps if s.startswith("quantize")]
    ctx = RunContext(workdir=work, data=task, max_length=64, checkpoint_every=0)
    exported = Pipeline(",".join(torch_steps + ["export{verify=false}"])).run(model, ctx).artifact
    if not onnx_steps:
        return exported.path
    sizes_only = RunContext(workdir=work, data=None, checkpoint_every=0)  # no accuracy of random weights
    return Pipeline(",".join(onnx_steps)).run(exported, sizes_only, first_index=10).artifact.path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="bert-base,minilm")
    ap.add_argument("--removes", default="0,0.5,0.9,0.97")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    from transformers import AutoTokenizer

    from compressor.artifact import atomic_write_text
    from compressor.data import load_task
    from compressor.models import minilm_folder
    from compressor.report import machine_info
    from compressor.size_breakdown import size_breakdown

    task = load_task("rotten-tomatoes", seed=0)
    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()), local_files_only=True)
    rows = []
    for name in args.models.split(","):
        dense = _models.bert_base(tokenizer, args.seed) if name == "bert-base" else _models.minilm(args.seed)
        dense_bytes = None
        for remove in (float(r) for r in args.removes.split(",")):
            model = _models.structured_preset(dense, remove, args.seed)[0] if remove else dense
            for variant, steps in VARIANTS.items():
                with tempfile.TemporaryDirectory(prefix="embeddings-") as tmp:
                    size = size_breakdown(run_variant(model, steps, task, Path(tmp)))
                dense_bytes = dense_bytes or size["total_bytes"]
                row = {"model": name, "remove": remove, "variant": variant,
                       **{k: size[k] for k in ("total_bytes", "embeddings_bytes", "encoder_bytes", "head_bytes",
                                               "other_bytes")},
                       "of_dense_fp32": size["total_bytes"] / dense_bytes}
                rows.append(row)
                print(f"{name} -{remove:.0%} {variant}: {row['total_bytes'] / 1e6:.1f} MB "
                      f"({row['of_dense_fp32']:.1%} of dense fp32; embeddings {row['embeddings_bytes'] / 1e6:.1f} MB)",
                      file=sys.stderr)
    lines = ["| model | encoder removed | variant | MB | % of dense fp32 | embeddings MB | encoder MB | head+other MB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['remove']:.0%} | {r['variant']} | {r['total_bytes'] / 1e6:.1f} | "
                     f"{100 * r['of_dense_fp32']:.1f}% | {r['embeddings_bytes'] / 1e6:.1f} | "
                     f"{r['encoder_bytes'] / 1e6:.1f} | {(r['head_bytes'] + r['other_bytes']) / 1e6:.2f} |")
    command = " ".join(["python", *sys.argv])
    md = "\n".join(lines) + f"\n\nCommand: `{command}`\n"
    stem = Path(args.out) / "embeddings"
    atomic_write_text(stem.with_suffix(".json"), json.dumps(
        {"command": command, "machine": machine_info(), "rows": rows}, indent=1))
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
