"""GPU check of the CUDA and TensorRT targets, for a machine with a GPU (one script, one JSON).

1. Environment: ONNX Runtime version and providers, nvidia-smi, torch/CUDA, transformers.
2. For the ``cuda`` and ``tensorrt`` targets on a tiny exported BERT: does the strict target
   refuse (and with which one-line error), and what does ``allow_fallback=True`` run on and
   report (providers used, the report's warning line)?
3. When ``CUDAExecutionProvider`` really runs here (onnxruntime-gpu installed): export a
   MiniLM-shaped and (without ``--quick``) a bert-base-shaped model, dense and with 75% of the
   encoder removed structurally (``benchmarks/_models.structured_preset``), and profile dense
   vs pruned side by side on ``cpu``, ``cuda`` (IO binding; and with CUDA graphs),
   ``tensorrt`` (fp32 and fp16), plus each target's max |logit - CPU logit|.
4. When torch sees a GPU (``--torch-cuda``, on by default then): PyTorch eager fp32/fp16 p50 of
   the same dense and pruned models on CUDA, interleaved — labelled as torch, not ONNX Runtime,
   so there is a GPU number even where onnxruntime-gpu is absent.

Dependency-light: torch, transformers, onnx, onnxruntime and this repository (no Optimum, no
data set, no downloaded weights: models have random weights, tokenizer from a generated vocab).

    python benchmarks/gpu_check.py --out gpu_check.json            # ~1-4 min on a GPU machine
    python benchmarks/gpu_check.py --out gpu_check.json --quick    # tiny model only, seconds
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]  # runs from a plain checkout (no pip install)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

log = logging.getLogger("gpu_check")
FAMILIES = {  # name -> BertConfig sizes (random weights)
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
    "minilm-shape": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536),
    "bert-base-shape": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                            intermediate_size=3072),
}
REMOVE = 0.75  # fraction of encoder Linear parameters the structured preset removes


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:400]


def environment() -> dict:
    """Versions, providers, GPU as nvidia-smi and torch see it."""
    import onnxruntime as ort
    env = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__,
           "onnxruntime_device": ort.get_device(), "providers": ort.get_available_providers()}
    from importlib import metadata
    for pkg in ("onnxruntime-gpu", "onnxruntime", "onnx", "transformers", "torch", "tensorrt"):
        try:
            env[f"pkg:{pkg}"] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            env[f"pkg:{pkg}"] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        proc = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total",
                               "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        env["nvidia_smi"] = proc.stdout.strip() or proc.stderr.strip()
    else:
        env["nvidia_smi"] = None
    try:
        import torch
        env["torch_cuda"] = torch.cuda.is_available()
        env["torch_cuda_version"] = torch.version.cuda
        env["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        env["torch_cuda"] = None
    return env


def make_tokenizer(folder: Path):
    """A BERT WordPiece tokenizer over a generated vocabulary (no download)."""
    from transformers import BertTokenizerFast
    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += [chr(c) for c in range(ord("a"), ord("z") + 1)] + [f"##{chr(c)}" for c in range(ord("a"), ord("z") + 1)]
    words += ["the", "film", "was", "good", "bad", "a", "plot", "great", "dull"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))


def build_family(name: str, tokenizer, workdir: Path, export: bool, seed: int = 0) -> dict:
    """Dense and structured-pruned TorchModels of one family, exported when ``export``."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    import _models
    from compressor.artifact import TorchModel
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, num_labels=2,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **FAMILIES[name])
    cfg._attn_implementation = "eager"
    dense = TorchModel(BertForSequenceClassification(cfg).eval(), tokenizer, {"source": name})
    pruned, facts = _models.structured_preset(dense, REMOVE, seed)
    out = {"torch": {"dense": dense, "pruned": pruned},
           "facts": {k: facts[k] for k in ("heads_kept", "ffn_kept", "encoder_params_removed",
                                           "flop_reduction")}}
    if export:
        from compressor.context import RunContext
        from passes.export_onnx import Export
        out["onnx"] = {}
        for label, art in out["torch"].items():
            ctx = RunContext(workdir / name / label, seed=seed)
            ctx.step_dir = ctx.workdir / "onnx"
            out["onnx"][label] = Export()(art, ctx).artifact.path
    return out


def check_refusal(tiny_onnx: dict, workdir: Path) -> dict:
    """Strict and allow-fallback behaviour of the cuda and tensorrt targets on the tiny model."""
    from compressor.errors import TargetError
    from compressor.registry import get_target
    from compressor.report_md import fallback_text
    out = {}
    for name in ("cuda", "tensorrt"):
        cls = get_target(name)
        rec = {"requires": cls.requires, "provider": cls.providers[0],
               "provider_available": cls.is_available()}
        try:
            cls().with_workdir(workdir).session(tiny_onnx["dense"])
            rec["strict"] = {"refused": False}
        except TargetError as exc:
            rec["strict"] = {"refused": True, "error": str(exc)}
        try:
            profiles = cls(allow_fallback=True).with_workdir(workdir).profile(
                tiny_onnx, batch_sizes=(1,), seq_lens=(32,), warmup=1, runs=5)
            rows = [p.to_dict() for p in profiles]
            rec["allow_fallback"] = {
                "providers_used": sorted({",".join(p["providers_used"]) for p in rows}),
                "fallback": [p["fallback"] for p in rows],
                "report_warning": fallback_text({"profiles": rows}),
                "p50_ms": {p["model"]: p["p50_ms"] for p in rows}}
        except Exception as exc:  # record and go on: this script reports, it does not stop
            rec["allow_fallback"] = {"error": _first_line(exc)}
        out[name] = rec
    return out


def cuda_works(tiny_onnx: dict) -> tuple[bool, str | None]:
    from compressor.errors import TargetError
    from targets.cuda import CudaTarget
    if not CudaTarget.is_available():
        return False, "CUDAExecutionProvider is not in onnxruntime.get_available_providers()"
    try:
        CudaTarget().session(tiny_onnx["dense"])
        return True, None
    except TargetError as exc:
        return False, str(exc)


def ort_targets(workdir: Path) -> dict:
    """label -> target instance for the ORT GPU profiles."""
    from targets.cpu import CpuTarget
    from targets.cuda import CudaTarget
    from targets.tensorrt import TensorrtTarget
    out = {"cpu": CpuTarget(), "cuda": CudaTarget(), "cuda+graph": CudaTarget(cuda_graph=True)}
    if TensorrtTarget.is_available():
        out["tensorrt"] = TensorrtTarget().with_workdir(workdir)
        out["tensorrt-fp16"] = TensorrtTarget(fp16=True).with_workdir(workdir / "fp16")
    return out


def logit_diffs(onnx: dict, targets: dict) -> dict:
    """Max |logit - CPU logit| per target and model on one seeded b4xs64 batch."""
    import numpy as np

    from targets._io import make_feeds, make_token_arrays
    arrays = make_token_arrays(4, 64, 30522, seed=3)
    out = {}
    for label, path in onnx.items():
        ref = targets["cpu"].session(path)
        expect = ref.run(None, make_feeds(ref, arrays))[0]
        for tname, target in targets.items():
            if tname == "cpu":
                continue
            try:
                sess = target.session(path, shape_range=((4, 64),) * 3)
                got = sess.run(None, make_feeds(sess, arrays))[0]
                out.setdefault(tname, {})[label] = float(np.abs(got - expect).max())
            except Exception as exc:
                out.setdefault(tname, {})[label] = _first_line(exc)
    return out


def ort_profiles(onnx: dict, targets: dict, batch_sizes, seq_lens, runs: int) -> dict:
    from compressor.profiling import speedups
    out = {}
    for tname, target in targets.items():
        t0 = time.perf_counter()
        try:
            rows = [p.to_dict() for p in target.profile(onnx, batch_sizes=batch_sizes,
                                                        seq_lens=seq_lens, warmup=5, runs=runs)]
            for r in rows:
                r["target"] = tname  # keep variants apart (cuda vs cuda+graph)
            out[tname] = {"profiles": rows, "speedup": speedups(rows, baseline="dense").get(tname, {}),
                          "seconds": round(time.perf_counter() - t0, 1)}
        except Exception as exc:
            out[tname] = {"error": _first_line(exc)}
        log.info("ort %s: %s", tname, "ok" if "profiles" in out[tname] else out[tname]["error"])
    return out


def torch_cuda_profiles(models: dict, batch_sizes, seq_lens, runs: int, warmup: int = 5,
                        device: str = "cuda") -> dict:
    """PyTorch eager p50 (ms) of each model on ``device``, fp32 and fp16, interleaved per
    shape (every model once per round, order rotated)."""
    import copy

    import torch
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    out = {}
    for dtype in (torch.float32, torch.float16):
        on_gpu = {k: copy.deepcopy(m.model).to(dev, dtype=dtype).eval() for k, m in models.items()}
        rows = []
        for b in batch_sizes:
            for s in seq_lens:
                g = torch.Generator().manual_seed(b * 1000 + s)
                ids = torch.randint(0, 30522, (b, s), generator=g).to(dev)
                mask = torch.ones_like(ids)
                times = {k: [] for k in on_gpu}
                with torch.inference_mode():
                    for k, m in on_gpu.items():
                        for _ in range(warmup):
                            m(input_ids=ids, attention_mask=mask)
                    sync()
                    labels = list(on_gpu)
                    for r in range(runs):
                        order = labels[r % len(labels):] + labels[:r % len(labels)]
                        for k in order:
                            t0 = time.perf_counter()
                            on_gpu[k](input_ids=ids, attention_mask=mask)
                            sync()
                            times[k].append((time.perf_counter() - t0) * 1000)
                p50 = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
                rows.append({"batch": b, "seq_len": s, "p50_ms": p50,
                             "speedup": p50["dense"] / p50["pruned"] if p50.get("pruned") else None})
        out[str(dtype).replace("torch.", "")] = rows
        del on_gpu
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="where to write the JSON results")
    ap.add_argument("--quick", action="store_true", help="tiny model only, few runs")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per shape")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--seq-lens", default="32,128")
    ap.add_argument("--torch-cuda", choices=("auto", "yes", "no"), default="auto",
                    help="also time PyTorch eager on CUDA (auto: when torch sees a GPU)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    batch_sizes = tuple(int(x) for x in args.batch_sizes.split(","))
    seq_lens = tuple(int(x) for x in args.seq_lens.split(","))
    runs = 5 if args.quick else args.runs
    families = ["tiny"] if args.quick else ["minilm-shape", "bert-base-shape"]
    result = {"script": "benchmarks/gpu_check.py", "argv": sys.argv[1:],
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    t_start = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check-"))

    def save():
        result["seconds"] = round(time.perf_counter() - t_start, 1)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, default=str) + "\n")

    try:
        result["environment"] = environment()
        log.info("providers: %s", result["environment"]["providers"])
        tokenizer = make_tokenizer(workdir / "tokenizer")
        tiny = build_family("tiny", tokenizer, workdir, export=True)
        result["targets"] = check_refusal(tiny["onnx"], workdir / "trt")
        ok, why = cuda_works(tiny["onnx"])
        result["cuda_runs"] = {"ok": ok, "why_not": why}
        use_torch = args.torch_cuda == "yes" or (args.torch_cuda == "auto" and result["environment"].get("torch_cuda"))
        result["families"] = {}
        for name in families:
            fam = build_family(name, tokenizer, workdir, export=ok) if name != "tiny" else tiny
            rec = {"facts": fam["facts"]}
            if ok:
                targets = ort_targets(workdir / "trt" / name)
                rec["logit_max_abs_diff_vs_cpu"] = logit_diffs(fam["onnx"], targets)
                rec["ort"] = ort_profiles(fam["onnx"], targets, batch_sizes, seq_lens, runs)
            else:
                rec["ort"] = f"not run: {why}"
            if use_torch:
                try:
                    rec["torch_cuda_eager"] = torch_cuda_profiles(fam["torch"], batch_sizes, seq_lens, runs)
                except Exception as exc:
                    rec["torch_cuda_eager"] = {"error": _first_line(exc)}
            result["families"][name] = rec
            save()
    except Exception as exc:
        result["error"] = _first_line(exc)
        result["traceback"] = traceback.format_exc()
    finally:
        save()
        shutil.rmtree(workdir, ignore_errors=True)
    print(json.dumps({"out": args.out, "seconds": result.get("seconds"),
                      "providers": result.get("environment", {}).get("providers"),
                      "cuda_runs": result.get("cuda_runs"), "error": result.get("error"),
                      "targets": {k: {"refused": v.get("strict", {}).get("refused"),
                                      "fallback_runs_on": v.get("allow_fallback", {}).get("providers_used")}
                                  for k, v in result.get("targets", {}).items()}}, indent=2))
    return 1 if "error" in result else 0


if __name__ == "__main__":
    sys.exit(main())
