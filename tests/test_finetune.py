"""The training loop (_train) and the `finetune` pass on a tiny model and the toy task."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_model

from compressor.artifact import TorchModel
from compressor.context import RunContext
from compressor.data import Example, TaskData
from compressor.errors import ConfigError, DataError, ModelError
from compressor.evaluation import EncodedDataset, PadCollator, evaluate, predict_logits
from passes._train import train
from passes.finetune import Finetune


def ctx_for(tmp_path, task, seed=0):
    return RunContext(workdir=tmp_path, seed=seed, data=task, progress=False)


def test_dataset_pairs_truncation_and_dynamic_padding(tokenizer):
    rows = [Example("a short one", 1, "and its pair"), Example("a much longer first sentence " * 20, 0, "x")]
    ds = EncodedDataset(tokenizer, rows, max_length=16)
    assert len(ds) == 2 and ds[1]["idx"] == 1 and ds[1]["labels"] == 0
    assert len(ds[1]["input_ids"]) == 16
    batch = PadCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 16)
    assert batch["attention_mask"][0].sum() == len(ds[0]["input_ids"]) < 16
    assert int(batch["input_ids"][0, -1]) == tokenizer.pad_token_id
    assert batch["token_type_ids"][0].max() == 1  # second segment present
    assert batch["idx"].tolist() == [0, 1] and batch["labels"].tolist() == [1, 0]
    short = PadCollator(tokenizer.pad_token_id)([ds[0]])
    assert short["input_ids"].shape[1] == len(ds[0]["input_ids"])  # padded to the batch's longest


def _run(tokenizer, task, tmp_path, seed=0, **kw):
    seen, steps = [], []
    model = make_tiny_model()

    def loss_fn(model, batch, outputs):
        seen.append(batch["idx"].tolist())
        expected = [task.train[i].label for i in batch["idx"].tolist()]
        assert batch["labels"].tolist() == expected
        return outputs.loss

    res = train(model, tokenizer, task, ctx_for(tmp_path, task, seed), epochs=2, lr=1e-3,
                batch_size=16, loss_fn=loss_fn, after_step=lambda s, t: steps.append((s, t)), **kw)
    return model, res, seen, steps


def test_train_hooks_idx_and_seeded_order(tokenizer, toy_task, tmp_path):
    model, res, seen, steps = _run(tokenizer, toy_task, tmp_path)
    assert res.steps == 8 and steps == [(s, 8) for s in range(1, 9)]
    n = len(toy_task.train)
    first_epoch = sorted(i for b in seen[:4] for i in b)
    assert first_epoch == list(range(n))  # every example exactly once per epoch, stable idx
    assert seen[:4] != seen[4:]  # reshuffled each epoch
    assert [e["epoch"] for e in res.epochs] == [1, 2]
    assert all(0.0 <= e["accuracy"] <= 1.0 for e in res.epochs)
    assert not model.training
    _, _, again, _ = _run(tokenizer, toy_task, tmp_path)
    _, _, other, _ = _run(tokenizer, toy_task, tmp_path, seed=1)
    assert again == seen and other != seen


def test_best_eligible_epoch_is_restored(tokenizer, toy_task, tmp_path):
    snapshots = {}
    model = make_tiny_model()
    task = toy_task.carve_dev(16, seed=0)

    def after_step(step, total):
        if step == total // 2:  # end of epoch 1
            snapshots[1] = {k: v.clone() for k, v in model.state_dict().items()}

    res = train(model, tokenizer, task, ctx_for(tmp_path, task), epochs=2, lr=1e-3,
                batch_size=16, after_step=after_step, best_eligible=lambda epoch: epoch == 1)
    assert res.best_epoch == 1 and res.restored_epoch == 1 and res.selection == "dev"
    assert res.best_accuracy == res.epochs[0]["dev_accuracy"]
    assert res.accuracy == res.epochs[0]["accuracy"]  # eval accuracy of the restored state
    assert all(torch.equal(v, snapshots[1][k]) for k, v in model.state_dict().items())


def test_selection_never_reads_the_eval_split(tokenizer, toy_task, tmp_path):
    """The eval split's labels are the opposite of the truth: if it chose the epoch, the worst
    epoch would be kept. Chosen on dev, the kept epoch is the dev-best one; without a dev split
    nothing is chosen (the last epoch is kept)."""
    import dataclasses

    from compressor.data import Example
    task = toy_task.carve_dev(16, seed=0)
    flipped = dataclasses.replace(task, eval=[Example(e.text, 1 - e.label) for e in task.train])
    res = train(make_tiny_model(), tokenizer, flipped, ctx_for(tmp_path, flipped), epochs=4, lr=3e-3,
                batch_size=16)
    devs = [e["dev_accuracy"] for e in res.epochs]
    assert res.best_epoch == devs.index(max(devs)) + 1 and res.selection == "dev"
    no_dev = dataclasses.replace(flipped, dev=[])
    res = train(make_tiny_model(), tokenizer, no_dev, ctx_for(tmp_path / "b", no_dev), epochs=3, lr=3e-3,
                batch_size=16)
    assert res.best_epoch is None and res.restored_epoch is None and res.selection is None


def test_predict_logits_and_evaluate(tokenizer, toy_task):
    model = make_tiny_model()
    model.train()
    logits = predict_logits(model, tokenizer, toy_task.eval, max_length=32, batch_size=5)
    assert logits.shape == (len(toy_task.eval), 2)
    assert model.training  # mode restored
    acc = evaluate(model, tokenizer, toy_task.eval, max_length=32)
    labels = torch.tensor([e.label for e in toy_task.eval])
    assert acc == pytest.approx(float((logits.argmax(-1) == labels).float().mean()))


def test_finetune_learns_and_returns_teacher(tokenizer, toy_task, tmp_path):
    art = TorchModel(make_tiny_model(), tokenizer, {"source": "tiny"})
    before_weights = {k: v.clone() for k, v in art.model.state_dict().items()}
    base = evaluate(art.model, tokenizer, toy_task.eval, max_length=32)
    from conftest import make_toy_task
    task = make_toy_task(n_train=80).carve_dev(16, seed=0)  # 64 training rows, as toy_task has
    toy_task = task
    ctx = ctx_for(tmp_path, task)
    result = Finetune(epochs=6, lr=3e-3, batch_size=16, max_length=32)(art, ctx)
    acc = evaluate(result.artifact.model, tokenizer, toy_task.eval, max_length=32)
    assert acc > base and acc >= 0.8
    m = result.metrics
    assert m["accuracy"] == pytest.approx(acc) and len(m["accuracy_per_epoch"]) == 6
    assert m["best_accuracy"] == max(m["dev_accuracy_per_epoch"]) and m["train_seconds"] > 0
    teacher = result.teacher  # the pipeline makes it ctx.teacher; the pass does not
    assert ctx.teacher is None and teacher is not None and teacher.model is not result.artifact.model
    assert not teacher.model.training
    assert evaluate(teacher.model, tokenizer, toy_task.eval, max_length=32) == pytest.approx(acc)
    assert (tmp_path / "model" / "config.json").exists()
    assert all(torch.equal(v, before_weights[k]) for k, v in art.model.state_dict().items())


def test_finetune_max_train_subsamples(tokenizer, toy_task, tmp_path):
    art = TorchModel(make_tiny_model(), tokenizer, {})
    res = Finetune(epochs=1, batch_size=8, max_train=16)(art, ctx_for(tmp_path, toy_task))
    assert res.metrics["train_examples"] == 16 and res.metrics["steps"] == 2


def test_finetune_rejects_bad_options_and_inputs(tokenizer, toy_task, tmp_path):
    with pytest.raises(ConfigError, match="epochs=0"):
        Finetune(epochs=0)
    with pytest.raises(ConfigError, match="warmup"):
        Finetune(warmup=1.5)
    art = TorchModel(make_tiny_model(), tokenizer, {})
    with pytest.raises(DataError, match="training data"):
        Finetune(epochs=1)(art, RunContext(workdir=tmp_path, progress=False))
    three = TaskData("three", toy_task.train, toy_task.eval, ["a", "b", "c"])
    with pytest.raises(ModelError, match="num_labels=2"):
        Finetune(epochs=1)(art, ctx_for(tmp_path, three))
