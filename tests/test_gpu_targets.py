"""The CUDA and TensorRT targets: option validation, provider options, refusal and allowed
fallback on a machine without them (CPU only here), the IO-binding runner (checked on the CPU
device), the CLI's exit codes, and — on a machine with onnxruntime-gpu and a GPU — real runs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import onnxruntime as ort
import pytest

from compressor.cli import main
from compressor.errors import ConfigError, TargetError
from compressor.report_html import render_html
from compressor.report_md import render_markdown
from targets._io import make_feeds, make_token_arrays
from targets.cpu import CpuTarget
from targets.cuda import CudaTarget
from targets.tensorrt import TensorrtTarget, profile_shapes
from tests.test_targets import VOCAB, save_tiny_bert

AVAILABLE = ort.get_available_providers()
HAS_CUDA_EP = "CUDAExecutionProvider" in AVAILABLE
HAS_TRT_EP = "TensorrtExecutionProvider" in AVAILABLE


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-models")
    return {"dense": save_tiny_bert(root / "dense", hidden=32, layers=2),
            "compressed": save_tiny_bert(root / "compressed", hidden=8, seed=1)}


@pytest.fixture(scope="module")
def gpu_works(models):
    """A CUDA session that really runs on CUDA (onnxruntime-gpu lists CUDA even without a GPU)."""
    if not HAS_CUDA_EP:
        pytest.skip(f"needs onnxruntime-gpu with CUDAExecutionProvider; this onnxruntime offers "
                    f"{', '.join(AVAILABLE)}")
    try:
        CudaTarget().session(models["dense"])
    except TargetError as exc:
        pytest.skip(f"CUDAExecutionProvider is listed but no CUDA session runs here: {exc}")


@pytest.fixture
def no_cuda():
    if HAS_CUDA_EP:
        pytest.skip("this onnxruntime offers CUDAExecutionProvider: the refusal cannot be seen")


def _cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_registry_and_unknown_target():
    from compressor.registry import get_target
    assert get_target("cuda") is CudaTarget and get_target("tensorrt") is TensorrtTarget
    with pytest.raises(TargetError, match="unknown target 'tpu': available cpu, cuda, tensorrt"):
        get_target("tpu")


def test_options_are_validated():
    with pytest.raises(ConfigError, match="cuda_graph=True needs io_binding=True"):
        CudaTarget(cuda_graph=True, io_binding=False)
    with pytest.raises(ConfigError, match="device_id=-1"):
        CudaTarget(device_id=-1)
    with pytest.raises(ConfigError, match="arena_extend_strategy='grow'"):
        CudaTarget(arena_extend_strategy="grow")
    with pytest.raises(ConfigError, match="builder_optimization_level=6"):
        TensorrtTarget(builder_optimization_level=6)
    with pytest.raises(ConfigError, match="workspace_mb=-1"):
        TensorrtTarget(workspace_mb=-1)


def test_cuda_provider_options():
    target = CudaTarget(device_id=1, gpu_mem_limit_mb=512, use_tf32=False, cuda_graph=True)
    fixed, varying = ((8, 64),) * 3, ((8, 20), (8, 30), (8, 64))
    cuda, cpu = target.provider_options(shape_range=fixed)
    assert cuda == {"device_id": "1", "arena_extend_strategy": "kNextPowerOfTwo", "use_tf32": "0",
                    "gpu_mem_limit": str(512 * 1024 * 1024), "enable_cuda_graph": "1"}
    assert cpu == {}
    # CUDA graphs replay one shape: not for real-length batches or an unknown range
    assert "enable_cuda_graph" not in target.provider_options(shape_range=varying)[0]
    assert "enable_cuda_graph" not in target.provider_options()[0]
    assert "enable_cuda_graph" not in CudaTarget().provider_options(shape_range=fixed)[0]


def test_tensorrt_provider_options(models, tmp_path):
    target = TensorrtTarget(fp16=True, sparsity=True, workspace_mb=256, cuda_graph=True).with_workdir(tmp_path)
    assert target.cache_dir == str(tmp_path / "trt_cache")
    assert TensorrtTarget(cache_dir="/x").with_workdir(tmp_path).cache_dir == "/x"
    trt, cuda, cpu = target.provider_options(models["dense"], ((1, 4), (8, 16), (8, 32)))
    assert trt["trt_fp16_enable"] == "1" and trt["trt_sparsity_enable"] == "1"
    assert trt["trt_int8_enable"] == "0" and trt["trt_max_workspace_size"] == str(256 * 1024 * 1024)
    assert trt["trt_engine_cache_enable"] == "1"
    assert trt["trt_engine_cache_path"] == trt["trt_timing_cache_path"] == str(tmp_path / "trt_cache")
    names = ("input_ids", "attention_mask", "token_type_ids")  # the graph's inputs, in order
    assert trt["trt_profile_min_shapes"] == ",".join(f"{n}:1x4" for n in names)
    assert trt["trt_profile_opt_shapes"] == ",".join(f"{n}:8x16" for n in names)
    assert trt["trt_profile_max_shapes"] == ",".join(f"{n}:8x32" for n in names)
    assert "trt_cuda_graph_enable" not in trt  # a range, not one shape
    assert target.trt_options(models["dense"], ((2, 8),) * 3)["trt_cuda_graph_enable"] == "1"
    assert "enable_cuda_graph" not in cuda and cuda["device_id"] == "0" and cpu == {}
    assert profile_shapes(["a"], ((1, 1), (2, 2), (3, 3)))["trt_profile_max_shapes"] == "a:3x3"
    no_cache = TensorrtTarget(engine_cache=False, int8=True).trt_options()
    assert "trt_engine_cache_enable" not in no_cache and no_cache["trt_int8_enable"] == "1"


@pytest.mark.parametrize("cls, provider, package", [
    (CudaTarget, "CUDAExecutionProvider", "onnxruntime-gpu"),
    (TensorrtTarget, "TensorrtExecutionProvider", "onnxruntime-gpu and the TensorRT libraries")])
def test_missing_provider_is_refused_in_one_line(cls, provider, package, models, tmp_path):
    if provider in AVAILABLE:
        pytest.skip(f"this onnxruntime offers {provider}")
    target = cls().with_workdir(tmp_path)
    with pytest.raises(TargetError) as err:
        target.check_available()
    msg = str(err.value)
    assert msg.startswith(f"target '{cls.name}' needs {package} with {provider}; available here: ")
    assert "CPUExecutionProvider" in msg and "--allow-fallback" in msg and "\n" not in msg
    with pytest.raises(TargetError, match=provider):
        target.session(models["dense"])
    with pytest.raises(TargetError, match=provider):
        target.profile(models, seq_lens=(4,), warmup=0, runs=1)
    assert not (tmp_path / "trt_cache").exists()  # nothing written for a refused target


def test_allowed_fallback_profiles_cpu_and_the_report_says_so(models, no_cuda):
    profiles = CudaTarget(allow_fallback=True).profile(models, seq_lens=(4,), warmup=0, runs=2)
    assert [p.model for p in profiles] == ["dense", "compressed"]
    for p in profiles:
        assert p.fallback and p.providers_used == ["CPUExecutionProvider"]
        assert p.providers_requested == ["CUDAExecutionProvider", "CPUExecutionProvider"]
        assert p.options["io_binding"] and not p.options["io_binding_used"]  # asked, not possible
    report = {"run": {"model": "tiny", "method": "magnitude"},
              "profiles": [p.to_dict() for p in profiles]}
    md = render_markdown(report)
    banner = md.splitlines()[2]  # right under the title
    assert banner.startswith("> **WARNING: execution-provider fallback.**")
    assert ("target cuda asked for CUDAExecutionProvider, CPUExecutionProvider but ran on "
            "CPUExecutionProvider (dense, compressed)") in banner
    html = render_html(report)
    assert html.index('class="warning"') < html.index("<table>")
    assert "ran on CPUExecutionProvider" in html


def test_fallback_accuracy_runs_on_cpu(tmp_path, tokenizer, toy_task, no_cuda):
    path = save_tiny_bert(tmp_path / "m", vocab=tokenizer.vocab_size)
    tokenizer.save_pretrained(tmp_path / "m")
    cpu = CpuTarget().accuracy(path, toy_task.eval, max_length=16)
    assert CudaTarget(allow_fallback=True).accuracy(path, toy_task.eval, max_length=16) == cpu
    with pytest.raises(TargetError, match="CUDAExecutionProvider"):
        CudaTarget().accuracy(path, toy_task.eval, max_length=16)


@dataclass(frozen=True)
class CpuBound(CudaTarget):
    """The CUDA target's IO-binding runner with buffers on the CPU device, to test it here."""

    name: ClassVar[str] = "cpu-bound"
    providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)
    device_type: ClassVar[str] = "cpu"
    device_providers: ClassVar[tuple[str, ...]] = ("CPUExecutionProvider",)


def test_io_binding_runner_matches_plain_runs(models):
    target = CpuBound()
    sess = target.session(models["dense"])
    inputs = [make_token_arrays(2, n, VOCAB, seed=n) for n in (4, 7)]
    run, info = target.runner(sess, inputs)
    assert info == {"io_binding_used": True, "cuda_graph_used": False}
    for i, arrays in enumerate(inputs * 2):
        bound = [v.numpy() for v in run(i)]
        plain = sess.run(None, make_feeds(sess, arrays))
        np.testing.assert_array_equal(bound[0], plain[0])
    run, info = CpuBound(io_binding=False).runner(sess, inputs)
    assert info == {"io_binding_used": False, "cuda_graph_used": False}
    np.testing.assert_array_equal(run(1)[0], sess.run(None, make_feeds(sess, inputs[1]))[0])
    [p] = target.profile({"dense": models["dense"]}, seq_lens=(4,), warmup=1, runs=3)
    assert p.options["io_binding_used"] and not p.fallback
    assert p.device_memory_mb is None or p.device_memory_source.startswith("nvidia-smi")


def test_cli_profile_cuda_refused_then_allowed(models, capsys, no_cuda):
    code, out, err = _cli(["profile", str(models["dense"]), "--target", "cuda"], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and not out
    assert lines[0].startswith("error: target 'cuda' needs onnxruntime-gpu with CUDAExecutionProvider; "
                               "available here: ")
    code, out, err = _cli(["profile", str(models["dense"]), "--target", "cuda", "--allow-fallback",
                           "--batch-sizes", "1", "--seq-lens", "4", "--runs", "2", "--warmup", "0"], capsys)
    assert code == 0, err
    assert "WARNING: execution-provider fallback." in err and "ran on CPUExecutionProvider" in err
    assert "(FALLBACK)" in out


@pytest.mark.parametrize("args, fragment", [
    (["--target", "tpu"], "unknown target 'tpu': available cpu, cuda, tensorrt"),
    (["--batch-sizes", "0"], "each value must be an integer >= 1"),
    (["--seq-lens", "8,x"], "is not a comma-separated list of integers"),
    (["--seq-lens", "4096"], "seq_len=4096 is out of range: allowed [1, 64]"),
    (["--runs", "0"], "runs=0 is out of range"),
])
def test_cli_profile_bad_grid_or_target(args, fragment, tmp_path, capsys):
    path = save_tiny_bert(tmp_path / "m", max_positions=64)
    code, out, err = _cli(["profile", str(path), *args], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert code == 2 and len(lines) == 1 and fragment in lines[0], err


def test_cli_run_refuses_cuda_before_any_work(tmp_path, capsys, no_cuda):
    out_dir = tmp_path / "out"
    code, _, err = _cli(["run", "minilm", "--target", "cuda", "-o", str(out_dir)], capsys)
    assert code == 2 and "target 'cuda' needs onnxruntime-gpu" in err
    assert not out_dir.exists()


# ---- on a machine with onnxruntime-gpu and a GPU --------------------------------------------

@pytest.mark.gpu
def test_cuda_runs_on_the_gpu_with_io_binding_and_graphs(models, gpu_works):
    profiles = CudaTarget(cuda_graph=True).profile(models, batch_sizes=(1, 4), seq_lens=(16,),
                                                   warmup=2, runs=5)
    for p in profiles:
        assert not p.fallback and p.providers_used[0] == "CUDAExecutionProvider"
        assert p.options["io_binding_used"] and p.options["cuda_graph_used"]
        assert p.p50_ms > 0 and p.first_run_ms > 0
    real = {2: [make_token_arrays(2, n, VOCAB, seed=n) for n in (5, 9)]}
    [dense, _] = CudaTarget(cuda_graph=True).profile(models, batch_sizes=(), seq_lens=(),
                                                     warmup=1, runs=3, real_inputs=real)
    assert dense.shape == "b2xreal" and not dense.options["cuda_graph_used"]


@pytest.mark.gpu
def test_cuda_outputs_match_cpu(models, gpu_works):
    arrays = make_token_arrays(3, 12, VOCAB, seed=5)
    target = CudaTarget(use_tf32=False)
    sess = target.session(models["dense"])
    run, _ = target.runner(sess, [arrays])
    cpu = CpuTarget().session(models["dense"])
    np.testing.assert_allclose(run(0)[0].numpy(), cpu.run(None, make_feeds(cpu, arrays))[0],
                               rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
def test_tensorrt_builds_and_caches_engines(models, gpu_works, tmp_path):
    if not HAS_TRT_EP:
        pytest.skip("needs onnxruntime-gpu with TensorrtExecutionProvider")
    target = TensorrtTarget().with_workdir(tmp_path)
    try:
        profiles = target.profile(models, batch_sizes=(2,), seq_lens=(8,), warmup=1, runs=3)
    except TargetError as exc:
        pytest.skip(f"TensorRT libraries not usable here: {exc}")
    assert all(p.providers_used[0] == "TensorrtExecutionProvider" for p in profiles)
    assert any((tmp_path / "trt_cache").iterdir())
