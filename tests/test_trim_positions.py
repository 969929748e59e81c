"""trim-positions: sliced position table, buffers, config, tokenizer limit and the length checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from compressor.context import RunContext
from compressor.errors import ConfigError, DataError


def trim(art, tmp_path, m=32, max_length=32, data=None):
    from passes.trim_positions import TrimPositions
    ctx = RunContext(tmp_path / "run", max_length=max_length, data=data)
    return TrimPositions(max_positions=m)(art, ctx), ctx


def test_trimmed_model_gives_same_logits_up_to_max_positions(tiny_torch_model, tmp_path):
    res, ctx = trim(tiny_torch_model, tmp_path)
    model, tok = res.artifact.model, res.artifact.tokenizer
    emb = model.bert.embeddings
    assert emb.position_embeddings.weight.shape == (32, 32) and model.config.max_position_embeddings == 32
    assert emb.position_ids.shape == (1, 32) and emb.token_type_ids.shape == (1, 32)
    assert tok.model_max_length == 32 and tiny_torch_model.tokenizer.model_max_length != 32
    assert tiny_torch_model.model.bert.embeddings.position_embeddings.num_embeddings == 128
    assert res.metrics == {"positions_before": 128, "positions_after": 32, "position_params_removed": 96 * 32}
    ids = torch.randint(1000, 2000, (3, 32))
    mask = torch.ones_like(ids)
    mask[2, 20:] = 0
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits,
                                   tiny_torch_model.model(input_ids=ids, attention_mask=mask).logits,
                                   atol=0, rtol=0)
        with pytest.raises((IndexError, RuntimeError)):  # longer: torch fails, never a wrong answer
            model(input_ids=torch.randint(1000, 2000, (1, 33)))


def test_saved_folder_reloads_with_the_limit(tiny_torch_model, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    _, ctx = trim(tiny_torch_model, tmp_path)
    folder = ctx.workdir / "model"
    assert json.loads((folder / "config.json").read_text())["max_position_embeddings"] == 32
    model = AutoModelForSequenceClassification.from_pretrained(str(folder), local_files_only=True)
    assert model.bert.embeddings.position_ids.shape == (1, 32)
    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert tok.model_max_length == 32
    assert len(tok("word " * 100, truncation=True)["input_ids"]) == 32


def test_export_of_trimmed_model_verifies_and_rejects_longer_inputs(tiny_torch_model, toy_task, tmp_path):
    from compressor.onnx_utils import make_session, random_feeds
    from passes.export_onnx import Export
    res, ctx = trim(tiny_torch_model, tmp_path, data=toy_task)
    ctx.step_dir = tmp_path / "export"
    out = Export()(res.artifact, ctx)
    assert out.metrics["max_abs_diff"] <= 1e-4 and "2x32" in out.metrics["max_abs_diff_by_shape"]
    session = make_session(out.artifact.path)
    names = [i.name for i in session.get_inputs()]
    assert session.run(None, random_feeds(names, 2, 32, 1000))[0].shape == (2, 2)
    with pytest.raises(Exception):  # ORT fails on the position broadcast: not silently wrong
        session.run(None, random_feeds(names, 2, 33, 1000))


def test_bad_values_raise_one_line(tiny_torch_model, tmp_path):
    from passes.trim_positions import TrimPositions, check_input_length
    with pytest.raises(ConfigError, match="max_positions=1 is out of range"):
        TrimPositions(max_positions=1)
    with pytest.raises(ConfigError) as err:
        trim(tiny_torch_model, tmp_path, m=64, max_length=128)
    assert "max_positions=64" in str(err.value) and "max_length=128" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="max_positions=256 is more than the model's 128"):
        trim(tiny_torch_model, tmp_path, m=256, max_length=64)
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": 32}))
    check_input_length(folder, 32)
    check_input_length(tmp_path, 10_000)  # no config: nothing to check
    with pytest.raises(DataError, match="input of 33 tokens is longer than the model's 32"):
        check_input_length(folder, 33)


def test_no_change_when_already_small(tiny_torch_model, tmp_path):
    res, _ = trim(tiny_torch_model, tmp_path, m=128, max_length=128)
    assert res.modified is False and res.artifact is tiny_torch_model
    assert np.isclose(res.metrics["position_params_removed"], 0)
