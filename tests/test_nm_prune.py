"""nm-prune: the N:M mask on hand-made weights, the pattern in every group of every targeted
encoder Linear, 50% sparsity, masks surviving fine-tuning, Linears that cannot hold the pattern,
and sparse-init after 2:4 (COO would be larger at 50% zeros: the file is left as it is)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from passes._masks import encoder_linears
from passes.families import family_of
from passes.nm_prune import NMPrune, follows_nm, nm_mask


def test_nm_mask_by_hand():
    w = torch.tensor([[0.1, -3.0, 2.0, 0.5, 1.0, 1.0, -1.0, 0.0],
                      [4.0, 0.0, 0.0, -4.0, 0.2, 0.3, -0.1, 0.25]])
    expected = torch.tensor([[0, 1, 1, 0, 1, 1, 0, 0],  # ties: the earlier position wins
                             [1, 0, 0, 1, 0, 1, 0, 1]], dtype=torch.bool)
    assert torch.equal(nm_mask(w, 2, 4), expected)
    assert torch.equal(nm_mask(w, 1, 4), torch.tensor([[0, 1, 0, 0, 1, 0, 0, 0],
                                                       [1, 0, 0, 0, 0, 1, 0, 0]], dtype=torch.bool))
    assert follows_nm(w * expected, 2, 4) and not follows_nm(w, 2, 4)
    assert not follows_nm(torch.ones(2, 6), 2, 4)  # width not a multiple of m
    with pytest.raises(ValueError, match="multiple of m=4"):
        nm_mask(torch.ones(2, 6), 2, 4)


def _logits(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (3, 17), generator=g)
    mask = torch.ones_like(ids)
    mask[2, 10:] = 0
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_pattern_holds_in_every_group(tiny_torch_model, tmp_path):
    before = {k: v.weight.detach().clone() for k, v in encoder_linears(tiny_torch_model.model).items()}
    res = NMPrune()(tiny_torch_model, RunContext(tmp_path))
    m, model = res.metrics, res.artifact.model
    linears = encoder_linears(model)
    assert m["pattern"] == "2:4" and m["pattern_ok"] and m["targeted"] == len(linears) == 12
    assert m["skipped"] == [] and m["sparsity"] == 0.5 and m["encoder_sparsity"] == 0.5
    assert set(m["layer_sparsity"].values()) == {0.5}
    for name, lin in linears.items():
        w = lin.weight.detach()
        groups = (w != 0).reshape(w.shape[0], -1, 4).sum(-1)
        assert bool((groups == 2).all()), name  # random weights: exactly 2 survivors per group
        kept = before[name].abs().reshape(w.shape[0], -1, 4)
        survivors = w.abs().reshape(w.shape[0], -1, 4)
        # the survivors are the two largest magnitudes of their group
        assert torch.equal(survivors.sort(-1).values[..., 2:], kept.sort(-1).values[..., 2:]), name
        assert not hasattr(lin, "parametrizations")  # masks baked in
    assert torch.isfinite(_logits(model)).all()
    assert not torch.equal(_logits(model), _logits(tiny_torch_model.model))
    assert all(torch.equal(v.weight, before[k]) for k, v in
               encoder_linears(tiny_torch_model.model).items())  # the input is left dense
    assert (tmp_path / "model" / "model.safetensors").is_file()


def test_other_ratio_and_fine_tuning(tiny_torch_model, toy_task, tmp_path):
    ctx = RunContext(tmp_path, data=toy_task)
    oneshot = NMPrune(n=1, m=4)(tiny_torch_model, ctx)
    assert oneshot.metrics["sparsity"] == 0.75 and oneshot.metrics["accuracy"] is not None
    tuned = NMPrune(n=1, m=4, epochs=1, batch_size=16, lr=1e-3)(tiny_torch_model, ctx)
    assert tuned.metrics["steps"] == 4 and tuned.metrics["sparsity"] == 0.75
    for name, lin in encoder_linears(tuned.artifact.model).items():
        assert follows_nm(lin.weight, 1, 4), name  # masks survived the optimizer steps
    a = encoder_linears(oneshot.artifact.model)
    b = encoder_linears(tuned.artifact.model)
    name = next(iter(a))
    assert torch.equal(a[name].weight != 0, b[name].weight != 0)  # same mask, fixed while training
    assert not torch.equal(a[name].weight, b[name].weight)  # but the kept weights trained


def test_stripped_widths_that_cannot_hold_the_pattern(tokenizer, tmp_path):
    model = make_tiny_model(layers=2, hidden=32, heads=4, ffn=64)
    family = family_of(model)
    layers = family.layers()
    family.keep_ffn(layers[0], list(range(37)))  # the FFN output has 37 inputs: not a multiple of 4
    family.keep_heads(layers[1], [])  # no attention Linears left in layer 1 (BiasOnly stand-in)
    names = {role: name for name, role in family.linear_roles().items()}
    res = NMPrune()(TorchModel(model, tokenizer), RunContext(tmp_path))
    assert res.metrics["skipped"] == [names[0, "ffn_out"]]
    assert res.metrics["targeted"] == 5 + 2  # layer 0 less its FFN output; layer 1 its FFN
    assert family.linear(layers[0], "ffn_out").weight.ne(0).all()  # the input model is untouched
    out = encoder_linears(res.artifact.model)
    assert out[names[0, "ffn_out"]].weight.ne(0).all()  # left dense
    assert follows_nm(out[names[0, "ffn_in"]].weight)
    assert torch.isfinite(_logits(res.artifact.model)).all()


def test_sparse_init_after_nm_leaves_the_file(tiny_torch_model, tmp_path):
    from passes.export_onnx import Export
    from passes.sparse_initializers import SparseInit

    pruned = NMPrune()(tiny_torch_model, RunContext(tmp_path / "nm")).artifact
    exported = Export(verify=False)(pruned, RunContext(tmp_path / "export")).artifact
    res = SparseInit()(exported, RunContext(tmp_path / "sparse"))
    # 50% zeros: 4 bytes of value + 8 of flat index per non-zero (6 per element) vs 4 dense,
    # so no 2:4 weight is converted; only all-zero biases of the tiny model are
    import onnx

    sparse_dims = [list(a.sparse_tensor.dims) for n in onnx.load(str(res.artifact.path)).graph.node
                   for a in n.attribute if a.name == "sparse_value"]
    assert len(sparse_dims) == res.metrics["tensors_converted"]
    assert all(len(d) == 1 for d in sparse_dims)
    assert res.metrics["size_bytes"] <= res.metrics["size_bytes_before"]


def test_options(monkeypatch):
    import compressor.registry as registry
    from compressor.pipeline import parse_spec

    with pytest.raises(ConfigError, match="nm-prune.n=4"):
        NMPrune(n=4, m=4)
    with pytest.raises(ConfigError, match="nm-prune.m=1"):
        NMPrune(n=1, m=1)
    monkeypatch.setitem(registry.PASSES, "nm-prune", NMPrune)
    assert parse_spec("nm-prune{n=1,m=8}") == [NMPrune(n=1, m=8)]
