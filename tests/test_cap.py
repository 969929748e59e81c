"""CAP (contrastive pruning, passes.cap): end-to-end runs, the masks during training, the
options and the CLI. Its loss and banks are tested in test_cap_loss.py, its criteria in
test_cap_prune.py."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.errors import ConfigError
from passes.cap.cap import Cap
from tests.conftest import make_tiny_model, make_toy_task, run_method_cli


def _ctx(tmp_path, task, teacher):
    return RunContext(workdir=tmp_path, data=task, teacher=teacher, progress=False)


@pytest.fixture
def setup(tokenizer, tmp_path):
    task = make_toy_task(n_train=48, n_eval=16)
    student = TorchModel(make_tiny_model(), tokenizer, {"source": "tiny"})
    teacher = TorchModel(make_tiny_model(seed=1), tokenizer, {})
    return task, student, teacher


def _check_saved(result, folder, target):
    from transformers import AutoModelForSequenceClassification
    model = result.artifact.model
    assert not any("parametrizations" in n for n, _ in model.named_parameters())   # baked
    zeros = total = 0
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".encoder.layer." in f".{name}":
            zeros, total = zeros + int((mod.weight == 0).sum()), total + mod.weight.numel()
    assert abs(zeros / total - target) < 0.005
    assert abs(result.metrics["sparsity"] - target) < 0.005
    reloaded = AutoModelForSequenceClassification.from_pretrained(folder / "model").eval()
    ids = torch.tensor([[101, 2204, 2143, 102]])
    torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-5, rtol=0)
    assert set(result.metrics["per_layer"]) == {"0", "1"} and result.metrics["train_seconds"] > 0


@pytest.mark.parametrize("criterion", ["magnitude", "movement", "soft-movement"])
def test_weight_end_to_end(setup, tmp_path, criterion):
    task, student, teacher = setup
    before = copy.deepcopy(student.model.state_dict())
    res = Cap(sparsity=0.6, criterion=criterion, epochs=2, batch_size=16, max_snapshots=1,
              l1_lambda=50.0)(student, _ctx(tmp_path, task, teacher))
    _check_saved(res, tmp_path, 0.6)
    banks = res.metrics["banks"]
    assert banks["prc"]["columns"] == 1 and banks["fic"]["columns"] == 1
    assert banks["snc"]["encoded"] == 1 and banks["snc"]["columns"] == 1   # one epoch boundary
    assert res.metrics["w_s"] == 10.0 and res.metrics["kd_temperature"] == 2.0
    for k, v in student.model.state_dict().items():   # the input model is untouched
        assert torch.equal(v, before[k])


@pytest.mark.parametrize("criterion", ["magnitude", "movement"])
def test_masks_survive_optimizer_steps(setup, tmp_path, monkeypatch, criterion):
    """After every optimizer step the masked weights are exactly 0 (the parametrization), even though
    AdamW keeps updating the underlying tensors; the sparsity follows the cubic ramp."""
    from passes import _train
    from passes._masks import MaskSet
    task, student, teacher = setup
    seen = {"zeros_hold": True, "sparsity": []}
    real_train = _train.train

    def spy_train(model, tokenizer, task, ctx, **kw):
        masks, inner = MaskSet.from_model(model), kw["after_step"]

        def after_step(step, total):
            inner(step, total)
            for name, module in masks.modules.items():
                seen["zeros_hold"] &= bool((module.weight[masks.mask(name) == 0] == 0).all())
            seen["sparsity"].append(masks.sparsity_report()["overall"])
        return real_train(model, tokenizer, task, ctx, **{**kw, "after_step": after_step})

    monkeypatch.setattr(_train, "train", spy_train)
    res = Cap(sparsity=0.7, criterion=criterion, epochs=2, batch_size=8, update_every=1, start=0.0,
              end=0.5, lr=1e-3)(student, _ctx(tmp_path, task, teacher))
    assert seen["zeros_hold"] and len(seen["sparsity"]) == res.metrics["steps"] == 12
    assert seen["sparsity"][0] > 0 and abs(seen["sparsity"][-1] - 0.7) < 0.005
    if criterion == "magnitude":   # masks only shrink
        assert seen["sparsity"] == sorted(seen["sparsity"])


def test_structured_stages_hand_the_collapse_guard_the_earlier_stages(setup, tmp_path, monkeypatch):
    """Each stage's training call gets every earlier stage's epoch records, labelled by stage, so a
    last stage that falls to the majority class after stage 2 learned is stopped (tests/test_collapse.py)."""
    import passes._train as tr
    task, student, teacher = setup
    real, seen = tr.train, []

    def recording(*args, **kw):
        seen.append((kw["desc"], [e["epoch"] for e in kw["earlier_epochs"]]))
        return real(*args, **kw)
    monkeypatch.setattr(tr, "train", recording)
    Cap(sparsity=0.5, granularity="structured", stages=3, epochs=3, batch_size=16)(student, _ctx(tmp_path, task, teacher))
    assert seen == [("cap stage 1", []), ("cap stage 2", ["1 of cap stage 1"]),
                    ("cap stage 3", ["1 of cap stage 1", "1 of cap stage 2"])]


def test_structured_end_to_end_zeroes_whole_heads_and_neurons(setup, tmp_path):
    task, student, teacher = setup
    res = Cap(sparsity=0.5, granularity="structured", stages=2, epochs=2, batch_size=16,
              max_snapshots=4)(student, _ctx(tmp_path, task, teacher))
    _check_saved(res, tmp_path, 0.5)
    m = res.metrics
    assert [s["stage"] for s in m["stages"]] == [1, 2] and m["stages"][0]["sparsity"] < m["stages"][1]["sparsity"]
    assert sum(m["heads_kept"]) == 4 and m["w_u"] == 0.3 and m["kd_temperature"] == 1.0
    assert m["banks"]["snc"]["columns"] == 1 and m["seconds"]["importance"] > 0
    for layer, heads in zip(res.artifact.model.bert.encoder.layer, m["heads_kept"]):
        v = layer.attention.self.value.weight.reshape(4, 8, -1)
        zero_heads = (v == 0).flatten(1).all(1)
        assert int((~zero_heads).sum()) == heads
        o = layer.attention.output.dense.weight.reshape(32, 4, 8)
        assert torch.equal((o == 0).all(2).all(0), zero_heads)
        w1, w2 = layer.intermediate.dense.weight, layer.output.dense.weight
        assert torch.equal((w1 == 0).all(1), (w2 == 0).all(0))


def test_all_contrastive_terms_off_never_call_the_loss(setup, tmp_path, monkeypatch):
    import passes.cap.contrastive as pc
    task, student, teacher = setup

    def boom(*a, **k):
        raise AssertionError("contrastive_loss called with every bank off")
    monkeypatch.setattr(pc, "contrastive_loss", boom)
    res = Cap(sparsity=0.5, criterion="magnitude", epochs=1, batch_size=16, prc=False, snc=False,
              fic=False)(student, _ctx(tmp_path, task, teacher))
    assert res.metrics["banks"] == {} and abs(res.metrics["sparsity"] - 0.5) < 0.005


def test_teacher_required_and_options_checked(setup, tmp_path):
    task, student, teacher = setup
    with pytest.raises(ConfigError, match="needs a fine-tuned teacher"):
        Cap(epochs=1)(student, _ctx(tmp_path, task, None))
    for bad in ({"criterion": "random"}, {"sparsity": 1.0}, {"tau": 0.0}, {"w_u": -2.0}, {"end": 0.1}):
        with pytest.raises(ConfigError):
            Cap(**bad)
    with pytest.raises(ConfigError, match="keep_one_head"):
        Cap(sparsity=0.9, granularity="structured", keep_one_head=True)(student, _ctx(tmp_path, task, teacher))
    assert Cap(granularity="structured", w_s=5.0).hyper() == {"w_u": 0.3, "w_s": 5.0, "kd_temperature": 1.0}


@pytest.mark.parametrize("granularity", ["weight", "structured"])
def test_cli_run(tmp_path, tokenizer, capsys, granularity):
    code, out = run_method_cli(tmp_path, tokenizer, "cap", "--granularity", granularity)
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    step = next(s for s in report["steps"] if s["name"] == "cap")
    assert abs(step["metrics"]["sparsity"] - 0.5) < 0.005


def test_no_pruning_no_distillation_equals_finetune(setup, tmp_path):
    """Equivalence: at sparsity 0 with CE only (weight 1) and every bank off, CAP's training is
    exactly the shared fine-tuning loop (the masks are all ones, same optimizer and data order)."""
    from passes.finetune import Finetune
    task, student, _ = setup
    ctx = _ctx(tmp_path, task, None)
    ref = Finetune(epochs=2, lr=1e-3, batch_size=16, weight_decay=0.01)(student, ctx)
    cap = Cap(sparsity=0.0, criterion="magnitude", epochs=2, lr=1e-3, batch_size=16, weight_decay=0.01,
              w_ce=1.0, w_kd=0.0, prc=False, snc=False, fic=False)(student, ctx)
    ids = torch.tensor([[101, 2204, 2143, 1037, 102], [101, 6659, 5436, 102, 0]])
    torch.testing.assert_close(cap.artifact.model(input_ids=ids).logits,
                               ref.artifact.model(input_ids=ids).logits, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_minilm_structured_then_strip(tmp_path):
    """The real MiniLM: CAP-f to 50% in one short stage, then the strip pass computes the same."""
    from compressor.models import load_model
    from passes.strip import Strip
    pre = load_model("minilm", num_labels=2)
    task = make_toy_task(n_train=16, n_eval=8)
    ctx = _ctx(tmp_path, task, pre)   # the pre-trained model stands in for the teacher
    res = Cap(sparsity=0.5, granularity="structured", stages=1, epochs=1, batch_size=8, max_length=16,
              importance_batches=1)(pre, ctx)
    assert abs(res.metrics["sparsity"] - 0.5) < 0.005
    assert sum(res.metrics["heads_kept"]) == 72 - 36   # 6 layers x 12 heads, half pruned
    stripped = Strip()(res.artifact, ctx).artifact.model
    enc = pre.tokenizer(["a good film", "dull"], padding=True, return_tensors="pt")
    torch.testing.assert_close(stripped(**enc).logits, res.artifact.model(**enc).logits, atol=1e-4, rtol=0)
