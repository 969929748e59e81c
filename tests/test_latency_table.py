"""The latency table (measured on the CPU target, cached) and the FLOP cost model."""

from __future__ import annotations

import json

import pytest

import passes.fisher.latency_table as lt
from passes.fisher.cost import ModelShape, flop_cost_model
from targets.cpu import CpuTarget
from tests.conftest import make_tiny_model


@pytest.fixture(scope="module")
def tiny_config():
    return make_tiny_model(layers=2, hidden=32, heads=4, ffn=64).config


@pytest.fixture(scope="module")
def measured(tiny_config, tmp_path_factory):
    cache = tmp_path_factory.mktemp("latency")
    return lt.measure_latency_table(tiny_config, CpuTarget(threads=1), 1, 16, cache, runs=3, warmup=1,
                                    ffn_step=16), cache


def test_table_is_monotone_and_predicts_the_dense_time(measured):
    table, cache = measured
    assert table.unit == "ms" and table.ffn_widths == [0, 16, 32, 48, 64]
    assert len(table.attention) == 5 and len(table.ffn) == 5
    assert all(a <= b for a, b in zip(table.attention, table.attention[1:]))
    assert all(a <= b for a, b in zip(table.ffn, table.ffn[1:]))
    assert set(table.info["measured_ms"]) == {"dense", "empty", "zero", "att1", "att2", "att3", "att4",
                                              "ffn16", "ffn32", "ffn48", "ffn64"}
    # the table reproduces the measured dense time by construction, unless the layers alone sum to
    # more (timing noise): then the fixed cost is 0
    layers = 2 * (table.attention[-1] + table.ffn[-1])
    assert table.fixed >= 0
    assert table.dense_ms == pytest.approx(max(table.info["measured_ms"]["dense"], layers))
    assert table.predict([{"heads": 0, "ffn": 0}] * 2) <= table.dense_ms
    assert table.ffn_cost(24) == pytest.approx((table.ffn[1] + table.ffn[2]) / 2)
    assert len(table.per_layer()) == 2 and table.per_layer()[1]["attention"] == table.attention
    assert table.speedup(table.dense_structure()) == pytest.approx(1.0)


def test_table_is_cached_and_reused(measured, tiny_config, monkeypatch):
    table, cache = measured
    files = list(cache.glob("latency-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())
    assert saved["key"]["onnxruntime"] and saved["key"]["threads"] == 1 and saved["key"]["seq"] == 16

    def no_timing(*args, **kwargs):
        raise AssertionError("a cached table was measured again")
    monkeypatch.setattr(lt, "time_models", no_timing)
    again = lt.measure_latency_table(tiny_config, CpuTarget(threads=1), 1, 16, cache, runs=3, warmup=1, ffn_step=16)
    assert again.attention == table.attention and again.ffn == table.ffn and again.fixed == table.fixed
    assert again.info["cached"] is True
    calls = []
    monkeypatch.setattr(lt, "time_models", lambda target, paths, *a, **k: calls.append(1) or {p: 1.0 for p in paths})
    lt.measure_latency_table(tiny_config, CpuTarget(threads=2), 1, 16, cache, runs=1, warmup=0, ffn_step=16)
    assert calls and len(list(cache.glob("latency-*.json"))) == 2  # other threads: another table


def test_table_from_known_timings(tiny_config, tmp_path, monkeypatch):
    """Per-layer differences over the zero model, the base split evenly between the sublayers,
    the fixed cost the rest of the dense time (0 when the layers alone sum to more)."""
    monkeypatch.setattr(lt, "_export_variant", lambda config, folder, *a, **k: folder)

    def timings(dense):
        t = {"dense": dense, "empty": 1.0, "zero": 1.4}  # 2 layers: base (1.4 - 1.0) / 2 / 2 = 0.1
        t.update({f"att{h}": 1.4 + 0.2 * h for h in range(1, 5)})
        t.update({f"ffn{n}": 1.4 + 0.01 * n for n in (16, 32, 48, 64)})
        return lambda target, paths, *a, **k: {p: t[p] for p in paths}
    monkeypatch.setattr(lt, "time_models", timings(3.0))
    table = lt.measure_latency_table(tiny_config, CpuTarget(threads=1), 1, 16, tmp_path / "a", runs=1, ffn_step=16)
    assert table.attention == pytest.approx([0.1, 0.2, 0.3, 0.4, 0.5])
    assert table.ffn == pytest.approx([0.1, 0.18, 0.26, 0.34, 0.42])
    assert table.fixed == pytest.approx(3.0 - 2 * (0.5 + 0.42)) and table.dense_ms == pytest.approx(3.0)
    monkeypatch.setattr(lt, "time_models", timings(1.0))  # dense faster than its layers: noise
    low = lt.measure_latency_table(tiny_config, CpuTarget(threads=1), 1, 16, tmp_path / "b", runs=1, ffn_step=16)
    assert low.fixed == 0.0 and low.dense_ms == pytest.approx(2 * (0.5 + 0.42))


def test_isotonic_fit():
    assert lt.isotonic([1, 3, 2, 4]) == [1, 2.5, 2.5, 4]
    assert lt.isotonic([3, 2, 1]) == [2, 2, 2]
    assert lt.isotonic([0, 1, 2]) == [0, 1, 2]


def test_flop_model_counts_the_stripped_encoder_matmuls():
    """Kwon's per-head and per-neuron MACs == the matmul FLOPs of the stripped encoder / 2."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from passes.strip import apply_layer_sizes
    model = make_tiny_model(layers=2, hidden=32, heads=4, ffn=64)
    structure = [{"heads": 3, "ffn": 40}, {"heads": 0, "ffn": 17}]
    apply_layer_sizes(model, structure)
    seq = 12
    cost = flop_cost_model(model.config, seq)
    ids = torch.randint(100, 1000, (1, seq))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, attention_mask=torch.ones_like(ids))
    total = counter.get_total_flops()
    outside = 2 * 32 * 32 + 2 * 32 * 2  # pooler and classifier on the [CLS] token
    assert cost.predict(structure) == pytest.approx((total - outside) / 2)
    assert cost.dense == pytest.approx(2 * (4 * (4 * seq * 32 * 8 + 2 * seq * seq * 8) + 64 * 2 * seq * 32))


def test_shape_and_grid():
    shape = ModelShape.from_config({"hidden_size": 384, "num_attention_heads": 12, "intermediate_size": 1536,
                                       "num_hidden_layers": 6, "vocab_size": 30522})
    assert shape.head_size == 32
    grid = lt.default_ffn_widths(1536)
    assert grid[0] == 0 and grid[-1] == 1536 and grid[1] % 16 == 0 and 20 <= len(grid) <= 30


def test_int8_precision_times_quantized_models(tiny_config, tmp_path):
    """An INT8 deployment's table times dynamically quantized models, under its own cache key."""
    import onnx
    fp32 = lt._export_variant(tiny_config, tmp_path / "a", 64, 2, None)
    int8 = lt._export_variant(tiny_config, tmp_path / "b", 64, 2, None, precision="int8")
    ops = lambda p: {n.op_type for n in onnx.load(str(p)).graph.node}  # noqa: E731
    assert "MatMulInteger" in ops(int8) and "MatMulInteger" not in ops(fp32)
    target = CpuTarget(threads=1)
    shape = ModelShape.from_config(tiny_config)
    assert lt.cache_key(shape, target, 1, 16, [0, 64], "int8") != lt.cache_key(shape, target, 1, 16, [0, 64])
    with pytest.raises(Exception, match="precision"):
        lt.measure_latency_table(tiny_config, target, 1, 16, tmp_path, precision="fp16")


def test_int8f_precision_times_fused_then_quantized_models(tiny_config, tmp_path):
    """``--quantize fused``'s table: every timed model fused by ORT (one QAttention per layer that
    kept heads, with that layer's head count) and then dynamically quantized, the layer-less and
    head-less variants too; its own cache key."""
    import onnx
    from onnxruntime import InferenceSession
    ops = lambda p: [n.op_type for n in onnx.load(str(p)).graph.node]  # noqa: E731
    uneven = lt._export_variant(tiny_config, tmp_path / "u", 64, 2, [{"heads": 3, "ffn": 40}, {"heads": 1, "ffn": 8}],
                                precision="int8f")
    graph = onnx.load(str(uneven)).graph
    heads = [next(a.i for a in n.attribute if a.name == "num_heads") for n in graph.node if n.op_type == "QAttention"]
    assert sorted(heads) == [1, 3], heads
    assert "SkipLayerNormalization" in ops(uneven)
    assert not {"Softmax", "Attention"} & set(ops(uneven))  # the attention is fused and quantized
    plain = lt._export_variant(tiny_config, tmp_path / "p", 64, 2, [{"heads": 3, "ffn": 40}] * 2, precision="int8")
    assert "QAttention" not in ops(plain) and "Softmax" in ops(plain)
    for name, layers, sizes in (("e", 0, None), ("z", 2, {"heads": 0, "ffn": 0})):
        path = lt._export_variant(tiny_config, tmp_path / name, 64, layers, sizes, precision="int8f")
        assert "QAttention" not in ops(path)
        InferenceSession(str(path), providers=["CPUExecutionProvider"])  # loads
    shape, target = ModelShape.from_config(tiny_config), CpuTarget(threads=1)
    assert lt.cache_key(shape, target, 1, 16, [0, 64], "int8f") != lt.cache_key(shape, target, 1, 16, [0, 64], "int8")


def test_quantize_fused_searches_and_deploys_the_fused_graph():
    """``--quantize fused``: fisher's table and checks in int8f, ort-fuse (not strict) between the
    export and the dynamic INT8 step; the default plan has no ort-fuse."""
    from compressor.config import RunConfig
    from compressor.pipeline import Pipeline
    from compressor.run import method_spec
    spec = method_spec(RunConfig(model="minilm", method="fisher", speedup=2.0, quantize="fused"))
    steps = [p.name for p in Pipeline(spec).passes]
    assert "precision=int8f" in spec and "quantize{mode=dynamic" in spec
    assert steps.index("export") < steps.index("ort-fuse") < steps.index("quantize"), spec
    assert "ort-fuse{strict=false}" in spec
    default = method_spec(RunConfig(model="minilm", method="fisher", speedup=2.0))
    assert "ort-fuse" not in default and "precision=int8" in default and "int8f" not in default


def test_a_narrower_table_is_timed_against_the_full_width_dense(tiny_config, tmp_path, monkeypatch):
    """``hidden``: every entry at that width, the full-width dense model timed beside them as the
    reference a speedup is over; the fixed cost is the narrow dense model's; its own cache entry."""
    exported = {}

    def export(config, folder, vocab, layers, sizes, precision="fp32", hidden=0):
        exported[folder.name] = hidden
        return folder
    monkeypatch.setattr(lt, "_export_variant", export)
    t = {"reference": 4.0, "dense": 3.0, "empty": 1.0, "zero": 1.4}
    t.update({f"att{h}": 1.4 + 0.2 * h for h in range(1, 5)})
    t.update({f"ffn{n}": 1.4 + 0.01 * n for n in (16, 32, 48, 64)})
    monkeypatch.setattr(lt, "time_models", lambda target, paths, *a, **k: {p: t[p] for p in paths})
    table = lt.measure_latency_table(tiny_config, CpuTarget(threads=1), 1, 16, tmp_path, runs=1, ffn_step=16,
                                     hidden=16)
    assert exported.pop("reference") == 0 and set(exported.values()) == {16}
    assert table.fixed == pytest.approx(3.0 - 2 * (0.5 + 0.42))  # the narrow dense model's
    assert table.dense == table.dense_ms == pytest.approx(4.0) and table.info["hidden"] == 16
    assert table.speedup(table.dense_structure()) == pytest.approx(4.0 / 3.0)  # narrowing alone
    full = lt.measure_latency_table(tiny_config, CpuTarget(threads=1), 1, 16, tmp_path, runs=1, ffn_step=16)
    assert "reference" not in exported and full.dense == pytest.approx(3.0) and "hidden" not in full.info
    assert len(list(tmp_path.glob("latency-*.json"))) == 2


def test_a_narrow_variant_is_exported_narrow(tiny_config, tmp_path):
    """hidden=16 of a 32-wide model: no tensor keeps the full width; the layer sizes as asked
    (3 heads of 8 = 24, 40 neurons); the structure timer times such a variant against dense."""
    import onnx
    from onnx import numpy_helper
    path = lt._export_variant(tiny_config, tmp_path / "n", 64, 2, [{"heads": 3, "ffn": 40}] * 2, hidden=16)
    shapes = [numpy_helper.to_array(i).shape for i in onnx.load(str(path)).graph.initializer]
    assert (64, 16) in shapes and not any(32 in s for s in shapes), shapes  # the word table is 16 wide
    assert any(s in ((16, 24), (24, 16)) for s in shapes) and any(s in ((16, 40), (40, 16)) for s in shapes)
    table = lt.measure_latency_table(tiny_config, CpuTarget(threads=1), 1, 8, tmp_path / "t", runs=1, warmup=0,
                                     ffn_step=32, min_seconds=0.0, hidden=16)  # every variant, the layer-less too
    assert table.info["hidden"] == 16 and table.info["reference_ms"] == table.dense > 0
    with lt.StructureTimer(tiny_config, CpuTarget(threads=1), 1, 8, runs=1, warmup=0, hidden=16) as timer:
        assert timer([{"heads": 4, "ffn": 64}] * 2) > 0
    assert len(timer.trials) == 1
