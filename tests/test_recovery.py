"""Recovery that keeps accuracy: logit KD from the teacher (LogitKD, on by default in magnitude /
NIP / RPP), the distill pass after structured pruning, and a training budget that scales with
the data."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

from compressor.artifact import TorchModel  # noqa: E402
from compressor.context import RunContext  # noqa: E402
from passes._distill import LogitKD  # noqa: E402
from passes._schedule import epochs_for  # noqa: E402
from conftest import make_tiny_model  # noqa: E402


def _batch(idx, labels):
    return {"idx": torch.tensor(idx), "labels": torch.tensor(labels)}


def test_logit_kd_on_known_logits():
    # teacher p = (0.5, 0.5) at T=2 from logits (0, 0); student logits (0, 2 ln 3) -> at T=2
    # p_s = (1/4, 3/4): KL(p_t || p_s) = 0.5 ln(0.5/0.25) + 0.5 ln(0.5/0.75), times T^2 = 4.
    teacher = torch.tensor([[0.0, 0.0], [5.0, -5.0]])
    student = SimpleNamespace(logits=torch.tensor([[0.0, 2 * math.log(3.0)]], requires_grad=True))
    kl = 0.5 * math.log(2.0) + 0.5 * math.log(2.0 / 3.0)
    kd = LogitKD(teacher, temperature=2.0, hardness=1.0)
    assert kd(None, _batch([0], [1]), student).item() == pytest.approx(4 * kl, rel=1e-6)
    # the teacher row is looked up by idx: example 1's teacher is confident in class 0
    assert kd(None, _batch([1], [1]), student).item() > 4 * kl
    # hardness 0.5 adds half the CE on the label
    ce = -math.log(0.9)  # student p(class 1) at T=1: 9 / (1 + 9)
    half = LogitKD(teacher, temperature=2.0, hardness=0.5)
    assert half(None, _batch([0], [1]), student).item() == pytest.approx(0.5 * 4 * kl + 0.5 * ce, rel=1e-6)
    # an unlabelled (augmented) example only enters the KD term
    assert half(None, _batch([0], [-1]), student).item() == pytest.approx(0.5 * 4 * kl, rel=1e-6)


def test_logit_kd_pulls_the_student_to_the_teacher():
    teacher = torch.tensor([[2.0, -1.0]])
    z = torch.zeros(1, 2, requires_grad=True)
    kd = LogitKD(teacher, temperature=2.0)
    opt = torch.optim.SGD([z], lr=1.0)
    for _ in range(200):
        opt.zero_grad()
        kd(None, _batch([0], [1]), SimpleNamespace(logits=z)).backward()
        opt.step()
    assert torch.allclose(torch.softmax(z, -1), torch.softmax(teacher, -1), atol=1e-3)


def test_epochs_scale_with_the_data():
    assert epochs_for(9000, 32, 2, min_steps=500) == 2       # 282 steps an epoch: enough
    assert epochs_for(2576, 32, 2, min_steps=500) == 7       # MRPC-size: 81 an epoch
    assert epochs_for(400_000, 32, 2, min_steps=500) == 2    # a large task is not over-trained
    assert epochs_for(100, 32, 2, min_steps=10**6, max_epochs=50) == 50
    assert epochs_for(2576, 32, 2, min_steps=0) == 2


def test_magnitude_distils_from_the_teacher_by_default(tokenizer, toy_task, tmp_path):
    from passes.magnitude import Magnitude
    teacher = make_tiny_model()
    ctx = RunContext(workdir=tmp_path, data=toy_task, progress=False,
                     teacher=TorchModel(teacher, tokenizer, {}))
    art = TorchModel(make_tiny_model(), tokenizer, {})
    res = Magnitude(sparsity=0.5, epochs=1, max_length=32, batch_size=16)(art, ctx)
    assert res.metrics["loss"] == "kd" and res.metrics["kd_temperature"] == 2.0
    res = Magnitude(sparsity=0.5, epochs=1, max_length=32, batch_size=16, kd=False)(art, ctx)
    assert res.metrics["loss"] == "cross-entropy"


def test_distill_recovers_a_stripped_model_and_keeps_zeros(tokenizer, toy_task, tmp_path):
    from passes.distill.distill import Distill
    from passes.families import family_of
    from passes.finetune import Finetune
    ctx = RunContext(workdir=tmp_path, data=toy_task, progress=False)
    ctx.teacher = Finetune(epochs=4, lr=3e-3, batch_size=16, max_length=32)(
        TorchModel(make_tiny_model(), tokenizer, {}), ctx).teacher
    student = make_tiny_model(seed=1)
    family = family_of(student)
    for layer in family.layers():
        family.keep_heads(layer, [0])
        family.keep_ffn(layer, list(range(8)))
    with torch.no_grad():  # an unstructured zero pattern that must survive training
        w = family.linear(family.layers()[0], "ffn_in").weight
        w[:, ::2] = 0
    zeros = family.linear(family.layers()[0], "ffn_in").weight == 0
    from compressor.evaluation import predict_logits
    before = predict_logits(student, tokenizer, toy_task.train, 32)
    target = predict_logits(ctx.teacher.model, tokenizer, toy_task.train, 32)
    res = Distill(epochs=3, min_steps=0, lr=3e-3, batch_size=16, max_length=32)(
        TorchModel(student, tokenizer, {}), ctx)
    after = predict_logits(res.artifact.model, tokenizer, toy_task.train, 32)
    gap = lambda z: float((torch.softmax(z, -1) - torch.softmax(target, -1)).abs().mean())  # noqa: E731
    assert gap(after) < gap(before)  # closer to the teacher's predictions
    trained = family_of(res.artifact.model)
    assert bool((trained.linear(trained.layers()[0], "ffn_in").weight[zeros] == 0).all())
    assert res.metrics["loss"] == "kd" and res.metrics["epochs"] == 3


def test_recover_steps_sets_the_recovery_length_only():
    """--recover-steps N: distill trains at least N steps; the teacher's fine-tuning keeps its own
    budget; without --recover it is refused (ConfigError, exit 2 in the CLI)."""
    from compressor.config import MIN_STEPS, RunConfig
    from compressor.errors import ConfigError
    from compressor.run import method_spec
    base = dict(model="minilm", method="fisher", speedup=2.0, task="rotten-tomatoes", recover=True)
    default = method_spec(RunConfig(**base))
    longer = method_spec(RunConfig(**base, recover_steps=1000))
    assert f"distill{{min_steps={MIN_STEPS}," in default and "distill{min_steps=1000," in longer
    assert default.replace(f"distill{{min_steps={MIN_STEPS},", "distill{min_steps=1000,") == longer
    with_epochs = method_spec(RunConfig(**base, epochs=3, recover_steps=800))
    assert "distill{epochs=3,min_steps=800," in with_epochs
    with pytest.raises(ConfigError, match="--recover-steps 1000.*--recover"):
        RunConfig(**{**base, "recover": False}, recover_steps=1000).validate()
    with pytest.raises(ConfigError, match="recover_steps"):
        RunConfig(**base, recover_steps=-5).validate()
