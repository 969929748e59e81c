"""Compress MiniLM on Rotten Tomatoes with the Python API, in a few lines.

    python examples/python_api.py [--quick]

Fine-tunes the dense model, prunes 90% of the encoder weights by gradual magnitude pruning,
exports to ONNX (verified against PyTorch), stores the zeros as sparse initializers and prints
what each step did.
"""

import sys

from compressor import Pipeline, RunContext
from compressor.data import load_task
from compressor.models import load_model

quick = "--quick" in sys.argv
task = load_task("rotten-tomatoes")
if quick:
    task = task.subsample(max_train=600, max_eval=200)
model = load_model("minilm", num_labels=task.num_labels, label_names=task.label_names)

ctx = RunContext(workdir="out/python-api", data=task, seed=0)
epochs = 1 if quick else 2
pipeline = Pipeline(f"finetune{{epochs={epochs}}},magnitude{{sparsity=0.9,epochs={epochs}}},export,sparse-init")
result = pipeline.run(model, ctx)

for step in result.records:
    shown = {k: v for k, v in step.metrics.items() if not isinstance(v, (dict, list))}
    print(f"{step.index:02d} {step.name:12s} {step.seconds:7.1f}s  {shown}")
print("final ONNX model:", result.artifact.path)
