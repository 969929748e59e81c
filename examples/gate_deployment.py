"""Gate a deployment: compress, check quality gates, and ship the ONNX model only if they pass.

    python examples/gate_deployment.py                 # compress MiniLM (small budget), then gate
    python examples/gate_deployment.py --report out/python-api   # gate a finished run instead

Exits 0 and copies the model folder to out/deploy/ when every gate passes; exits 3 (the same
code as ``compress run --min-retention ...``) and ships nothing when one fails. A gate that
cannot be evaluated (say, a latency gate without a batch-1 profile) fails too.
The CLI equivalent in a CI job::

    compress run minilm ... --min-retention 0.95 --max-size-mb 100 --max-latency-ms 50 || exit $?
    compress gate out/run --min-retention 0.95 --json
"""

import argparse
import shutil
import sys

import compressor

GATES = {"min_retention": 0.90,   # compressed ONNX accuracy >= 90% of dense (a small budget)
         "max_size_mb": 100.0,    # the compressed ONNX file (MB of 10**6 bytes)
         "max_latency_ms": 50.0,  # compressed p50 at batch 1, every profiled shape
         "min_speedup": 1.0}      # dense p50 / compressed p50 at every profiled shape


def main(argv=None) -> int:
    """Compress (or load a finished run), check the gates, deploy; returns the exit code."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", help="gate this finished run folder instead of compressing")
    ap.add_argument("--output", default="out/gated")
    ap.add_argument("--deploy", default="out/deploy")
    args = ap.parse_args(argv)

    if args.report:
        report = compressor.Report.load(args.report)
        results = report.check_gates(GATES)
    else:
        report = compressor.compress("minilm", method="magnitude", sparsity=0.5,
                                     granularity="structured", output=args.output, max_train=2000,
                                     max_eval=500, epochs=1, runs=10, batch_sizes=(1, 8),
                                     seq_lens=(64,), gates=GATES)
        results = report.gates  # also recorded in report.json and report.md
    for g in results:
        print(f"{'PASS' if g['passed'] else 'FAIL'}  {g['name']:15s} {g['reason']}")
    if not all(g["passed"] for g in results):
        print("not deployed: a quality gate failed", file=sys.stderr)
        return 3
    shutil.copytree(report.onnx_path.parent, args.deploy, dirs_exist_ok=True)
    print(f"deployed {report.onnx_path.name} to {args.deploy}")
    return 0


if __name__ == "__main__":
    import logging
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    sys.exit(main())
