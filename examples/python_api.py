"""Compress MiniLM on Rotten Tomatoes with the Python API, in a few lines.

    python examples/python_api.py          # a small budget: about 3 minutes on 2 idle CPU cores
    python examples/python_api.py --full   # the whole train split (about half an hour)

Fine-tunes the dense model (the teacher), prunes 90% of the encoder weights by gradual magnitude
pruning, exports both models to ONNX (verified against PyTorch), scores them on the eval split,
times them side by side on ONNX Runtime's CPU provider and writes out/python-api/report.json
and report.md. Works offline: the model and the data come from local packages.
"""

import logging
import sys

import compressor

logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
full = "--full" in sys.argv
budget = {} if full else dict(max_train=2000, max_eval=500, epochs=1, runs=10,
                              batch_sizes=(1, 8), seq_lens=(64,))

report = compressor.compress("minilm", method="magnitude", sparsity=0.9, task="rotten-tomatoes",
                             output="out/python-api", **budget)

print(report)
print(f"accuracy {report.accuracy:.3f} (dense {report.dense_accuracy:.3f}, "
      f"{100 * report.retention:.1f}% retained)")
print(f"size {report.size_mb:.1f} MB ({report.size_ratio:.2f}x smaller)")
print(f"p50 at batch 1: {report.latency_ms('cpu', batch=1):.2f} ms "
      f"(dense {report.latency_ms('cpu', batch=1, model='dense'):.2f} ms)")
print("speedups:", {shape: round(x, 2) for shape, x in report.speedup.get("cpu", {}).items()})
print("final ONNX model:", report.onnx_path)
