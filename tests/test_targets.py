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
from compressor.profiling import (check_seq_lens, profile_targets, real_batches, shape_key, speedups,
                                  token_length_stats)
from targets import base
from targets._io import make_feeds, make_token_arrays, model_size_bytes, resolve_vocab_size
from targets.base import Profile, Target, percentiles, plan_rounds, throughput, timing_block, typical
from targets.cpu import CpuTarget

VOCAB = 50


def save_tiny_bert(folder, hidden=16, layers=1, seed=0, external=False, vocab=VOCAB, max_positions=None):
    """A BERT-shaped ONNX graph: embeddings (word + token type) masked by attention_mask,
    ``layers`` MatMul+Relu blocks, mean over the sequence, a 2-class head. Saves config.json
    (``vocab_size``, and ``max_position_embeddings`` when given)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)

    def init(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [init("word", vocab, hidden), init("types", 2, hidden), init("head", hidden, 2),
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
    config = {"vocab_size": vocab, **({"max_position_embeddings": max_positions} if max_positions else {})}
    (folder / "config.json").write_text(json.dumps(config))
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


@pytest.fixture
def fast(monkeypatch):
    """Every model counts as fast (timed in blocks), however long a warm-up took on this machine."""
    monkeypatch.setattr(base, "SHORT_RUN_MS", float("inf"))


@pytest.fixture
def slow(monkeypatch):
    """Every model counts as slow (timed one run at a time)."""
    monkeypatch.setattr(base, "SHORT_RUN_MS", 0.0)


def _record_calls(two_models, calls, **kw):
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
        def session(self, path, shape_range=None):
            return Recorder(path.parent.name, super().session(path, shape_range))

    return RecordingCpu(threads=1).profile(two_models, seq_lens=(4,), **kw)


def test_rounds_are_interleaved_with_rotated_order(two_models, fast):
    calls = []
    profiles = _record_calls(two_models, calls, warmup=2, runs=16)
    # per model: first run + 2 warm-ups, then rounds of both models, order rotated each round;
    # fast models run a block of 8 timed runs after one settling run, so 16 runs = 2 rounds
    assert calls[:6] == ["dense"] * 3 + ["compressed"] * 3
    assert calls[6:] == ["dense"] * 9 + ["compressed"] * 9 + ["compressed"] * 9 + ["dense"] * 9
    assert {(p.options["block"], p.options["settle_runs"]) for p in profiles} == {(8, 1)}


def test_slow_models_are_interleaved_one_run_at_a_time(two_models, slow):
    calls = []
    profiles = _record_calls(two_models, calls, warmup=2, runs=4)
    assert calls[:6] == ["dense"] * 3 + ["compressed"] * 3
    assert calls[6:] == ["dense", "compressed", "compressed", "dense"] * 2  # no settling runs
    assert {(p.options["block"], p.options["settle_runs"]) for p in profiles} == {(1, 0)}


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
    # token_type_ids (zeros) is derived from input_ids; attention_mask cannot be
    derived = make_feeds(sess, {"input_ids": a["input_ids"], "attention_mask": a["attention_mask"]})
    assert derived["token_type_ids"].shape == a["input_ids"].shape and not derived["token_type_ids"].any()
    with pytest.raises(ArtifactError, match="'attention_mask'"):
        make_feeds(sess, {"input_ids": a["input_ids"]})


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


def test_shape_keys_fixed_and_real():
    assert shape_key(8, 41, "real") == "b8xreal"
    rows = [{"model": m, "target": "cpu", "batch": 8, "seq_len": 41, "shape_kind": k, "p50_ms": v}
            for m, k, v in (("dense", "fixed", 10.0), ("compressed", "fixed", 5.0),
                            ("dense", "real", 8.0), ("compressed", "real", 2.0))]
    assert speedups(rows) == {"cpu": {"compressed": {"b8xs41": 2.0, "b8xreal": 4.0}}}


def test_real_inputs_rotate_one_batch_per_round(two_models, fast):
    fed = []

    class Recorder:
        def __init__(self, sess):
            self.sess = sess

        def __getattr__(self, name):
            return getattr(self.sess, name)

        def run(self, names, feeds):
            fed.append(feeds["input_ids"].shape)
            return self.sess.run(names, feeds)

    @dataclass(frozen=True)
    class RecordingCpu(CpuTarget):
        def session(self, path, shape_range=None):
            return Recorder(super().session(path, shape_range))

    real = {2: [make_token_arrays(2, n, VOCAB, seed=n) for n in (5, 9, 7)]}
    profiles = RecordingCpu(threads=1).profile(two_models, batch_sizes=(1,), seq_lens=(4,),
                                               warmup=1, runs=4, real_inputs=real)
    assert [(p.model, p.shape, p.shape_kind) for p in profiles] == [
        ("dense", "b1xs4", "fixed"), ("compressed", "b1xs4", "fixed"),
        ("dense", "b2xreal", "real"), ("compressed", "b2xreal", "real")]
    dense_real = profiles[2]
    assert dense_real.padded_lens == [5, 7, 9] and dense_real.seq_len == 7
    assert dense_real.session_ms + dense_real.first_inference_ms == pytest.approx(dense_real.first_run_ms)
    # real shape: first run (batch 0) and one warm-up (batch 1) per model; then per round each
    # model runs once untimed (settling) and then each of the 3 batches once, timed; 4 runs
    # become 6 (2 rounds) so each batch is timed equally often
    real_fed = [s[1] for s in fed[2 * 2 + 2 * (1 + 4):]]
    assert real_fed == [5, 9, 5, 9] + ([5] + [5, 9, 7]) * 4
    assert dense_real.runs == 6 and profiles[0].runs == 4
    assert dense_real.options["block"] == 3 and dense_real.options["settle_runs"] == 1
    assert len(dense_real.input_p50_ms) == 3 and profiles[0].input_p50_ms is None
    assert dense_real.typical_ms == pytest.approx(sum(dense_real.input_p50_ms) / 3)
    assert profiles[0].typical_ms == pytest.approx(profiles[0].p50_ms)
    assert set(speedups(profiles)["cpu"]["compressed"]) == {"b1xs4", "b2xreal"}


def test_plan_rounds_fills_the_time_and_covers_every_input():
    assert plan_rounds(30, 0.0, 5.0) == 30                   # off
    assert plan_rounds(30, 2.0, 5.0) == 400                  # 2 s at 5 ms a round
    assert plan_rounds(30, 2.0, 500.0) == 30                 # slow shapes keep runs
    assert plan_rounds(30, 60.0, 1.0) == 600                 # at most 20x runs
    assert plan_rounds(30, 0.0, 5.0, inputs=8) == 32         # a multiple of the inputs
    assert plan_rounds(30, 2.0, 5.0, inputs=8) % 8 == 0


def test_typical_counts_every_input_once():
    # input 0 is long (10 ms) and timed 3 times, input 1 short (2 ms) timed once: the p50 of the
    # mixed times would be 10 ms, the typical latency is the mean of the per-input medians
    ms, per_input = typical([10.0, 2.0, 10.0, 11.0], [0, 1, 0, 0])
    assert per_input == [10.0, 2.0] and ms == pytest.approx(6.0)


def test_speedups_prefer_the_typical_latency():
    rows = [{"model": m, "target": "cpu", "batch": 1, "seq_len": 30, "shape_kind": "real", "p50_ms": p50,
             "typical_ms": t} for m, p50, t in (("dense", 9.0, 8.0), ("compressed", 3.0, 4.0))]
    assert speedups(rows)["cpu"]["compressed"]["b1xreal"] == pytest.approx(2.0)
    for r in rows:
        r["typical_ms"] = None  # reports written before typical_ms: the p50
    assert speedups(rows)["cpu"]["compressed"]["b1xreal"] == pytest.approx(3.0)


def test_bad_grids_are_rejected(tmp_path, two_models):
    path = save_tiny_bert(tmp_path / "m", max_positions=64)
    with pytest.raises(ConfigError, match=r"seq_len=128 is out of range: allowed \[1, 64\]"):
        CpuTarget().profile({"dense": path}, seq_lens=(128,))
    with pytest.raises(ConfigError, match="batch=0 is out of range"):
        CpuTarget().profile(two_models, batch_sizes=(0,))
    with pytest.raises(ConfigError, match="nothing to profile"):
        CpuTarget().profile(two_models, batch_sizes=(), seq_lens=())
    with pytest.raises(ConfigError, match="warmup=-1"):
        CpuTarget().profile(two_models, warmup=-1)
    with pytest.raises(ConfigError, match=r"sequence length=600 is out of range: allowed \[1, 512\]"):
        check_seq_lens((32, 600), 512)
    check_seq_lens((32, 600), None)  # no limit known: accepted


def test_real_batches_pad_each_batch_to_its_longest(tokenizer, toy_task):
    batches = real_batches(tokenizer, toy_task.eval, (1, 4, 50), max_length=16, count=3, seed=0)
    assert set(batches) == {1, 4, 50} and all(len(v) == 3 for v in batches.values())
    for b, arrays in batches.items():
        for a in arrays:
            assert a["input_ids"].shape[0] == b and a["input_ids"].shape[1] <= 16
            assert a["input_ids"].shape == a["attention_mask"].shape
            assert a["attention_mask"][:, -1].any()  # the longest text fills the last column
    again = real_batches(tokenizer, toy_task.eval, (4,), max_length=16, count=3, seed=0)
    assert all(np.array_equal(x["input_ids"], y["input_ids"]) for x, y in zip(again[4], batches[4]))
    by_default = real_batches(tokenizer, toy_task.eval, (1, 8), max_length=16, seed=0)
    assert {b: len(v) for b, v in by_default.items()} == {1: 64, 8: 8}  # >= 64 texts per size
    stats = token_length_stats(tokenizer, toy_task.eval, max_length=16)
    assert stats["count"] == len(toy_task.eval) and 3 <= stats["median"] <= stats["max"] <= 16
    assert stats["truncated"] == 0.0
    assert token_length_stats(tokenizer, toy_task.eval, max_length=4)["truncated"] == 1.0


@pytest.fixture(scope="module")
def tokenized_models(tmp_path_factory, tokenizer):
    """Two tiny graphs over the MiniLM vocabulary, each folder with the tokenizer beside it."""
    root = tmp_path_factory.mktemp("tokenized")
    out = {}
    for label, hidden, seed in (("dense", 16, 0), ("compressed", 8, 1)):
        out[label] = save_tiny_bert(root / label, hidden=hidden, seed=seed, vocab=tokenizer.vocab_size,
                                    max_positions=64)
        tokenizer.save_pretrained(root / label)
    return out


def test_profile_targets_grid_and_accuracy(tokenized_models, tokenizer, toy_task):
    from compressor.onnx_utils import onnx_accuracy
    out = profile_targets([CpuTarget(threads=1)], tokenized_models, examples=toy_task.eval,
                          tokenizer=tokenizer, batch_sizes=(1, 2), seq_lens=(8,), runs=2, warmup=0,
                          max_length=16)
    shapes = [(p["model"], p["batch"], p["shape_kind"]) for p in out["profiles"]]
    assert shapes == [(m, b, k) for k, b in (("fixed", 1), ("fixed", 2), ("real", 1), ("real", 2))
                      for m in ("dense", "compressed")]
    grid = out["grid"]
    assert grid["real_shapes"] and grid["batch_sizes"] == [1, 2] and grid["seq_lens"] == [8]
    assert grid["real_batches_by_size"] == {"1": 64, "2": 32}
    real = {(p["model"], p["batch"]): p for p in out["profiles"] if p["shape_kind"] == "real"}
    assert len(real["compressed", 1]["input_p50_ms"]) == 64  # every text timed, one latency each
    iv = real["compressed", 1]["speedup_interval"]["dense"]
    assert iv["n"] == 64 and iv["items"] == "texts" and iv["low"] <= iv["ratio"] <= iv["high"]
    assert real["compressed", 2]["speedup_interval"]["dense"]["items"] == "batches"
    assert "speedup_interval" not in real["dense", 1]
    assert grid["eval_token_lengths"]["count"] == len(toy_task.eval)
    for label, path in tokenized_models.items():
        expected = onnx_accuracy(path.parent, toy_task.eval, max_length=16)
        assert out["accuracy"][label] == {"cpu": pytest.approx(expected)}
    # the CPU accuracy measured before is reused; no eval data -> no real shapes, no accuracy
    again = profile_targets([CpuTarget(threads=1)], tokenized_models, examples=toy_task.eval,
                            tokenizer=tokenizer, batch_sizes=(1,), seq_lens=(8,), runs=1, warmup=0,
                            max_length=16, real_shapes=False, known_accuracy={"dense": 0.125})
    assert again["accuracy"]["dense"] == {"cpu": 0.125}
    assert {p["shape_kind"] for p in again["profiles"]} == {"fixed"}
    bare = profile_targets([CpuTarget(threads=1)], tokenized_models, batch_sizes=(1,), seq_lens=(8,),
                           runs=1, warmup=0)
    assert bare["accuracy"] == {"dense": {}, "compressed": {}} and not bare["grid"]["real_shapes"]


def test_fast_models_are_timed_in_blocks_and_slow_ones_one_by_one():
    assert timing_block(3.0) == (8, 1)              # b1: a block of 8 after one settling run
    assert timing_block(3.0, runs=5) == (5, 1)      # never more than the runs asked
    assert timing_block(3.0, inputs=8) == (8, 1)    # real texts: each once per round
    assert timing_block(3.0, inputs=3) == (3, 1)
    assert timing_block(3.0, inputs=64) == (8, 1)   # 64 texts at b1: 8 of them per round
    assert timing_block(400.0, inputs=8) == (1, 0)  # b32 x s128: one run per model per round


def test_sessions_stop_spinning_after_each_run():
    so = CpuTarget().session_options()
    assert so.get_session_config_entry("session.force_spinning_stop") == "1"
