"""The family adapters: the table agrees with the classes, roles name the right modules in model
order, slicing keeps the function, FLOPs follow the kept units, unknown families are refused."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from compressor import registry  # noqa: E402
from compressor.errors import ModelError  # noqa: E402
from conftest import make_tiny_model  # noqa: E402
from passes.families import family_of  # noqa: E402
from passes.families.base import ROLES, BiasOnly, Family  # noqa: E402
from passes.families.bert import BertFamily, NoFFN, NoHeads  # noqa: E402


def test_every_table_entry_is_a_family_of_that_model_type():
    for model_type in registry.FAMILIES:
        cls = registry.family(model_type)
        assert issubclass(cls, Family) and model_type in cls.model_types
        assert set(cls.role_paths) == set(ROLES) or cls.linear is not Family.linear


def test_bert_roles_are_the_bert_modules_in_model_order():
    model = make_tiny_model(layers=2)
    fam = family_of(model)
    assert isinstance(fam, BertFamily) and len(fam.layers()) == 2
    layer = model.bert.encoder.layer[1]
    assert fam.linear(layer, "query") is layer.attention.self.query
    assert fam.linear(layer, "attn_out") is layer.attention.output.dense
    assert fam.linear(layer, "ffn_in") is layer.intermediate.dense
    assert fam.linear(layer, "ffn_out") is layer.output.dense
    roles = fam.linear_roles()
    linear_names = [n for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) and ".encoder.layer." in n]
    assert list(roles) == linear_names  # model order, six per layer
    assert [r for _, r in roles.values()] == list(ROLES) * 2
    assert [i for i, _ in roles.values()] == [0] * 6 + [1] * 6
    assert set(fam.linears(include=("pooler", "classifier"))) == set(roles) | {"bert.pooler.dense", "classifier"}


def test_keep_units_changes_sizes_flops_and_keeps_stand_ins():
    model = make_tiny_model(layers=2, hidden=32, heads=4, ffn=64)
    fam = family_of(model)
    dense_flops = fam.encoder_flops(16)
    first, second = fam.layers()
    fam.keep_heads(first, [0, 2])
    fam.keep_ffn(first, list(range(10)))
    fam.keep_heads(second, [])
    fam.keep_ffn(second, [])
    assert fam.layer_sizes(first) == (2, 10) and fam.layer_sizes(second) == (0, 0)
    assert isinstance(second.attention.self, NoHeads) and isinstance(fam.ffn_hidden(second), NoFFN)
    assert isinstance(fam.linear(second, "attn_out"), BiasOnly) and fam.linear(second, "query") is None
    assert len(fam.linear_roles()) == 6  # the emptied layer has no role Linears left
    d, s = 8, 16
    layer0 = 2 * s * (3 * 32 * 2 * d + 2 * d * 32 + 2 * 32 * 10) + 4 * s * s * 2 * d
    assert fam.encoder_flops(s) == layer0 < dense_flops
    ids = torch.randint(5, 100, (2, 7))
    out = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits
    assert out.shape == (2, 2) and torch.isfinite(out).all()


def test_trim_positions_keeps_the_first_rows_and_buffers():
    model = make_tiny_model()
    fam = family_of(model)
    before = fam.position_table().weight[:16].detach().clone()
    fam.trim_positions(16)
    assert fam.position_table().num_embeddings == 16
    assert torch.equal(fam.position_table().weight, before)
    assert fam.embeddings().position_ids.shape[1] == 16


def test_unknown_family_is_refused_with_the_supported_ones():
    with pytest.raises(ModelError, match=r"unsupported architecture 'gpt2': supported bert"):
        registry.family("gpt2")
    with pytest.raises(ModelError, match=r"known family \(supported: bert"):
        family_of(torch.nn.Linear(2, 2))
