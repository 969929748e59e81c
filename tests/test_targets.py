"""Targets and the profiler: percentile maths, side-by-side profiling of two tiny ONNX models,
provider checks (unavailable provider, silent fallback, allowed fallback)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest

from compressor.errors import ArtifactError, ConfigError, TargetError
from targets.base import (Profile, Target, make_feeds, make_token_arrays, model_size_bytes,
                          percentiles, resolve_vocab_size, shape_key, speedups, throughput)
from targets.cpu import CpuTarget

VOCAB = 50


def save_tiny_bert(folder, hidden=16, layers=1, seed=0, external=False):
    """A BERT-shaped ONNX graph: embeddings (word + token type) masked by attention_mask,
    ``layers`` MatMul+Relu blocks, mean over the sequence, a 2-class head. Saves config.json."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [init("word", VOCAB, hidden), init("types", 2, hidden), init("head", hidden, 2),
             numpy_helper.from_array(np.array([-1], dtype=np.int64), "minus1"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    nodes = [helper.make_node("Gather", ["word", "input_ids"], ["we"]),
             helper.make_node("Gather", ["types", "token_type_ids"], ["te"]),
             helper.make_node("Add", ["we", "te"], ["emb"]),
             helper.make_node("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
             helper.make_node("Unsqueeze", ["maskf", "minus1"], ["mask3"]),
             helper.make_node("Mul", ["emb", "mask3"], ["h0"])]
    for i in range(layers):
        inits.append(init(f"w{i}", hidden, hidden))
        nodes += [helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"m{i}"]),
                  helper.make_node("Relu", [f"m{i}"], [f"h{i + 1}"])]
    nodes += [helper.make_node("ReduceMean", [f"h{layers}", "axis1"], ["pooled"], keepdims=0),
              helper.make_node("MatMul", ["pooled", "head"], ["logits"])]
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "seq"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph(nodes, "tiny_bert", inputs, [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    if external:
        onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                  location="model.onnx.data", size_threshold=64)
    else:
        onnx.save(model, str(path))
    (folder / "config.json").write_text(json.dumps({"vocab_size": VOCAB}))
    return path


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"dense": save_tiny_bert(root / "dense", hidden=64, layers=3),
            "compressed": save_tiny_bert(root / "compressed", hidden=16, layers=1, seed=1)}


@dataclass(frozen=True)
class CudaFirst(Target):
    """A CUDA target defined here so the test does not depend on a CUDA target module."""

    name: ClassVar[str] = "cuda-test"
    providers: ClassVar[tuple[str, ...]] = ("CUDAExecutionProvider", "CPUExecutionProvider")


@pytest.fixture
def no_cuda():
    if CudaFirst.is_available():
        pytest.skip("this onnxruntime offers CUDAExecutionProvider")


def test_percentiles_on_fixed_sequence():
    st = percentiles([float(x) for x in range(1, 11)])
    assert st["p50"] == pytest.approx(5.5)
    assert st["p90"] == pytest.approx(9.1)
    assert st["p95"] == pytest.approx(9.55)
    assert st["p99"] == pytest.approx(9.91)
    assert (st["mean"], st["min"], st["max"]) == (pytest.approx(5.5), 1.0, 10.0)
    assert percentiles([3.0]) == {k: 3.0 for k in ("p50", "p90", "p95", "p99", "mean", "min", "max")}
    with pytest.raises(ConfigError, match="empty"):
        percentiles([])


def test_throughput_and_shape_key():
    assert throughput(8, 100.0) == pytest.approx(80.0)
    assert throughput(1, 2.5) == pytest.approx(400.0)
    assert shape_key(4, 64) == "b4xs64"


def test_target_options_are_validated():
    with pytest.raises(ConfigError, match="threads=-1"):
        CpuTarget(threads=-1)
    with pytest.raises(ConfigError, match="'fast'.*all, extended, basic, disabled"):
        CpuTarget(graph_optimization="fast")
    import onnxruntime as ort
    so = CpuTarget(threads=1, graph_optimization="disabled", inter_op_threads=1).session_options()
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (1, 1)


def test_registry_finds_cpu_target():
    from compressor.registry import get_target
    assert get_target("cpu") is CpuTarget


def test_profile_two_models_side_by_side(two_models):
    profiles = CpuTarget(threads=1).profile(two_models, batch_sizes=(1, 2), seq_lens=(8,),
                                            warmup=1, runs=5)
    assert [(p.model, p.batch, p.seq_len) for p in profiles] == [
        ("dense", 1, 8), ("compressed", 1, 8), ("dense", 2, 8), ("compressed", 2, 8)]
    for p in profiles:
        assert isinstance(p, Profile) and p.target == "cpu"
        assert (p.runs, p.warmup) == (5, 1)
        assert p.providers_requested == ["CPUExecutionProvider"]
        assert p.providers_used == ["CPUExecutionProvider"] and p.fallback is False
        assert p.size_bytes == two_models[p.model].stat().st_size
        assert p.min_ms <= p.p50_ms <= p.p90_ms <= p.p95_ms <= p.p99_ms <= p.max_ms
        assert p.throughput == pytest.approx(p.batch * 1000 / p.p50_ms)
        assert p.first_run_ms > 0 and p.peak_rss_mb > 0
        assert p.options["threads"] == 1
        assert json.loads(json.dumps(p.to_dict()))["model"] == p.model
    sp = speedups(profiles)
    assert set(sp) == {"cpu"} and set(sp["cpu"]) == {"compressed"}
    assert set(sp["cpu"]["compressed"]) == {"b1xs8", "b2xs8"}
    dense, comp = profiles[0], profiles[1]
    assert sp["cpu"]["compressed"]["b1xs8"] == pytest.approx(dense.p50_ms / comp.p50_ms)
    assert speedups([p.to_dict() for p in profiles]) == sp
    assert speedups([comp]) == {}  # no baseline profile at that shape


def test_rounds_are_interleaved_with_rotated_order(two_models):
    calls = []

    class Recorder:
        def __init__(self, label, sess):
            self.label, self.sess = label, sess

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, *args):
            calls.append(self.label)
            return self.sess.run(*args)

    @dataclass(frozen=True)
    class RecordingCpu(CpuTarget):
        def session(self, path):
            return Recorder(path.parent.name, super().session(path))

    RecordingCpu(threads=1).profile(two_models, seq_lens=(4,), warmup=2, runs=4)
    # per model: first run + 2 warm-ups, then 4 rounds of both models, order rotated each round
    assert calls[:6] == ["dense"] * 3 + ["compressed"] * 3
    assert calls[6:] == ["dense", "compressed", "compressed", "dense"] * 2


def test_inputs_fixed_seed_and_vocab_range(two_models, tmp_path):
    assert resolve_vocab_size(two_models.values()) == VOCAB
    assert resolve_vocab_size([tmp_path / "model.onnx"]) == 100  # no config.json: safe default
    a, b = make_token_arrays(2, 16, VOCAB, seed=3), make_token_arrays(2, 16, VOCAB, seed=3)
    assert np.array_equal(a["input_ids"], b["input_ids"])
    assert a["input_ids"].min() >= 0 and a["input_ids"].max() < VOCAB
    assert a["attention_mask"].all() and not a["token_type_ids"].any()
    sess = CpuTarget().session(two_models["dense"])
    feeds = make_feeds(sess, a)
    assert set(feeds) == {"input_ids", "attention_mask", "token_type_ids"}
    with pytest.raises(ArtifactError, match="'token_type_ids'"):
        make_feeds(sess, {"input_ids": a["input_ids"], "attention_mask": a["attention_mask"]})


def test_size_counts_external_data(tmp_path):
    path = save_tiny_bert(tmp_path / "ext", hidden=32, external=True)
    data = tmp_path / "ext" / "model.onnx.data"
    assert data.exists()
    assert model_size_bytes(path) == path.stat().st_size + data.stat().st_size
    [p] = CpuTarget(threads=1).profile({"dense": path}, seq_lens=(4,), warmup=0, runs=2)
    assert p.size_bytes == model_size_bytes(path)


def test_unavailable_provider_is_an_error(two_models, no_cuda):
    with pytest.raises(TargetError) as err:
        CudaFirst().session(two_models["dense"])
    assert "CUDAExecutionProvider" in str(err.value)
    assert "available" in str(err.value) and "CPUExecutionProvider" in str(err.value)
    with pytest.raises(TargetError, match="CUDAExecutionProvider"):
        CudaFirst().profile(two_models, seq_lens=(4,), warmup=0, runs=1)


def test_allowed_fallback_is_marked(two_models, no_cuda, caplog):
    with caplog.at_level(logging.WARNING, logger="targets.base"):
        profiles = CudaFirst(allow_fallback=True).profile(two_models, seq_lens=(4,), warmup=0, runs=2)
    assert all(p.fallback for p in profiles)
    assert all(p.providers_used == ["CPUExecutionProvider"] for p in profiles)
    assert profiles[0].providers_requested == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert "CUDAExecutionProvider" in caplog.text


def test_silent_fallback_is_caught(two_models, monkeypatch):
    """onnxruntime-gpu without a GPU accepts the providers and runs on CPU: get_providers()
    is the only sign. Simulate that with a session that reports CPU only."""
    import onnxruntime as ort
    real = ort.InferenceSession

    def cpu_only(path, sess_options=None, providers=None, provider_options=None):
        return real(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

    @dataclass(frozen=True)
    class AzureFirst(Target):
        name: ClassVar[str] = "azure-test"
        providers: ClassVar[tuple[str, ...]] = ("AzureExecutionProvider", "CPUExecutionProvider")

    if not AzureFirst.is_available():
        pytest.skip("this onnxruntime build has no AzureExecutionProvider")
    monkeypatch.setattr(ort, "InferenceSession", cpu_only)
    with pytest.raises(TargetError, match="asked for AzureExecutionProvider.*uses CPUExecutionProvider"):
        AzureFirst().session(two_models["dense"])
    sess = AzureFirst(allow_fallback=True).session(two_models["dense"])
    assert AzureFirst().fell_back(sess)


def test_missing_and_corrupt_models(tmp_path, two_models):
    with pytest.raises(ArtifactError, match="does not exist"):
        CpuTarget().profile({"dense": tmp_path / "nope.onnx"})
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(ArtifactError, match="cannot load"):
        CpuTarget().session(bad)
    with pytest.raises(ConfigError, match="runs=0"):
        CpuTarget().profile(two_models, runs=0)
    with pytest.raises(ConfigError, match="at least one model"):
        CpuTarget().profile({})
