"""A collapse is a failure, found early (issue 23 item 6): the training loop stops a pass whose dev
metric collapses to the majority class (exit 4), a collapsed deployment exits 3 with its report
written, and ``--allow-collapse`` (recipe, API) lets both through."""

from __future__ import annotations

import json
import logging

import pytest

from compressor.errors import CollapseError, ConfigError
from compressor.metrics import (TRAINING_MIN_ROWS, clearly_above, deployment_collapse, epoch_collapse,
                                training_collapse)
from conftest import make_tiny_model, make_toy_task, write_tiny_run_inputs

MAJ = 0.564  # the measured case: minilm, cap, sparsity 0.97 on rotten-tomatoes' 1,000 dev rows


def rec(epoch, acc, majority=MAJ, rows=1000, top_class=0, top_share=0.6):
    return {"epoch": epoch, "dev_accuracy": acc, "dev_majority": majority, "dev_rows": rows,
            "dev_top_class": top_class, "dev_top_share": top_share}


def trivial(epoch, rows=1000):
    return rec(epoch, MAJ, rows=rows, top_share=1.0)


# -- the decision, on hand-made dev metrics ------------------------------------------------------
def test_a_model_that_learned_and_fell_to_the_majority_class_stops_at_once():
    assert training_collapse([rec(1, 0.80), trivial(2)], epochs=3) == "after 80.00% at epoch 1"


def test_the_first_epoch_never_stops_a_pass():
    assert training_collapse([trivial(1)], epochs=3) is None
    assert training_collapse([trivial(1)], epochs=1) is None  # a one-epoch call: the deployment check


def test_a_slow_start_is_not_a_collapse_until_the_last_epoch():
    # measured below: a healthy tiny model predicts one class at epochs 1-2 of 4, then learns
    assert training_collapse([trivial(1), trivial(2)], epochs=4) is None
    assert training_collapse([trivial(1), trivial(2), trivial(3)], epochs=4) is None
    assert training_collapse([trivial(e) for e in range(1, 5)], epochs=4) == "at every epoch (1-4)"


def test_an_earlier_stage_that_learned_counts_but_earlier_trivial_stages_do_not():
    """A staged method (CAP structured: one training call per stage) passes its earlier stages'
    records: a last stage that falls to the majority class after stage 2 learned stops at once
    (measured: CAP's last stage emptying two layers), a one-epoch stage alone never does, and
    earlier trivial stages never make "every epoch was trivial"."""
    stage2 = {**rec(1, 0.8127), "epoch": "1 of cap stage 2"}
    assert training_collapse([trivial(1)], 1) is None
    assert training_collapse([trivial(1)], 1, earlier=[stage2]) == "after 81.27% at epoch 1 of cap stage 2"
    flat = [{**trivial(1), "epoch": f"1 of cap stage {k}"} for k in (1, 2)]
    assert training_collapse([trivial(1)], 1, earlier=flat) is None


def test_a_dev_split_too_small_to_tell_never_stops():
    small = TRAINING_MIN_ROWS - 1
    assert training_collapse([rec(1, 0.95, rows=small), trivial(2, rows=small)], epochs=3) is None
    assert training_collapse([trivial(1, small), trivial(2, small)], epochs=2) is None
    assert training_collapse([rec(1, 0.95), trivial(2, rows=TRAINING_MIN_ROWS)], epochs=3) is not None


def test_a_kept_epoch_above_the_majority_class_lets_training_go_on():
    good = rec(1, 0.80)
    history = [good, trivial(2)]
    assert training_collapse(history, 3, kept=good) is None  # the call returns epoch 1's state
    assert training_collapse(history, 3, kept=history[-1]) is not None
    assert training_collapse(history, 3, kept=None) is not None  # nothing eligible yet: the last


def test_noise_near_the_majority_class_is_not_a_model_that_learned():
    # 58% on 1,000 rows is within two standard errors (3.1 points) of 56.4%: not "learned"
    assert not clearly_above(0.58, MAJ, 1000) and clearly_above(0.60, MAJ, 1000)
    assert training_collapse([rec(1, 0.58), trivial(2)], epochs=3) is None
    assert not clearly_above(0.75, 0.5, 16) and clearly_above(0.80, 0.5, 16) and not clearly_above(1.0, 0.5, 0)


def test_one_class_for_nearly_every_row_is_trivial_too():
    one_class = rec(2, 0.70, majority=0.55, top_class=1, top_share=0.99)
    assert "predicts class 1 for 99.0%" in epoch_collapse(one_class)
    assert epoch_collapse(rec(2, 0.70, majority=0.55, top_share=0.97)) is None
    assert epoch_collapse({"epoch": 1, "dev_accuracy": None}) is None  # no dev split
    assert training_collapse([rec(1, 0.9, majority=0.55), one_class], epochs=3) is not None


def test_a_deployment_collapse_needs_a_dense_model_that_learned():
    assert "dense model scores 84.00%" in deployment_collapse(MAJ, 0.84, MAJ, 2532)
    assert deployment_collapse(0.80, 0.84, MAJ, 2532) is None  # not collapsed
    assert deployment_collapse(0.438, 0.438, 0.5625, 16) is None  # the dense model is trivial too
    assert deployment_collapse(0.5, 0.70, 0.5, 16) is None  # 16 rows cannot tell 70% from 50%


# -- the training loop ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dev_task():
    """140 train rows and a 60-row dev split (enough to tell a collapse)."""
    return make_toy_task(n_train=200, n_eval=24).carve_dev(60, seed=0)


def _ctx(tmp_path, task, **kw):
    from compressor.context import RunContext
    return RunContext(workdir=tmp_path, data=task, progress=False, checkpoint_every=0, **kw)


def _zero_head_after(model, start: float):
    """An after_step hook that zeroes the classifier from ``start`` (a fraction of the steps) on:
    equal logits, so the model predicts class 0 for every row (a deterministic collapse)."""
    import torch

    def hook(step, total):
        if step > start * total:
            with torch.no_grad():
                model.classifier.weight.zero_()
                model.classifier.bias.zero_()
    return hook


def test_a_pass_that_loses_what_it_learned_stops_with_one_line(tokenizer, tmp_path, dev_task):
    from passes._train import train
    model = make_tiny_model()
    with pytest.raises(CollapseError) as info:
        train(model, tokenizer, dev_task, _ctx(tmp_path, dev_task), epochs=6, lr=3e-3, batch_size=16,
              max_length=32, after_step=_zero_head_after(model, 0.5), best_eligible=lambda e: e >= 4,
              desc="probe")
    msg = str(info.value)
    assert "\n" not in msg and info.value.exit_code == 4
    assert msg.startswith("pass 'probe' epoch 4/6: training collapsed to the majority class")
    assert "vs majority 55.00% on 60 dev rows (class 0 predicted for 100.0% of them) after 100.00% at epoch 3" in msg
    for ask in ("--sparsity", "--speedup X", "--max-drop D", "--allow-collapse"):
        assert ask in msg


def test_a_later_call_of_the_same_pass_sees_its_earlier_calls(tokenizer, tmp_path, dev_task):
    """``earlier_epochs``: a one-epoch call that collapses after an earlier call of the pass learned
    stops (alone, a first epoch never stops a call)."""
    from passes._train import train
    model = make_tiny_model()
    kw = dict(lr=3e-3, batch_size=16, max_length=32)
    first = train(model, tokenizer, dev_task, _ctx(tmp_path / "a", dev_task), epochs=3, desc="probe stage 1", **kw)
    assert clearly_above(first.epochs[-1]["dev_accuracy"], first.epochs[-1]["dev_majority"], 60)
    earlier = tuple({**e, "epoch": f"{e['epoch']} of probe stage 1"} for e in first.epochs)
    with pytest.raises(CollapseError, match=r"pass 'probe stage 2' epoch 1/1: .* after .* at epoch \d of probe stage 1"):
        train(model, tokenizer, dev_task, _ctx(tmp_path / "c", dev_task), epochs=1,
              after_step=_zero_head_after(model, 0.0), desc="probe stage 2", earlier_epochs=earlier, **kw)


def test_allowed_a_collapsing_pass_trains_to_the_end(tokenizer, tmp_path, dev_task, caplog):
    from passes._train import train
    model = make_tiny_model()
    with caplog.at_level(logging.WARNING, logger="passes._train"):
        res = train(model, tokenizer, dev_task, _ctx(tmp_path, dev_task, allow_collapse=True), epochs=6,
                    lr=3e-3, batch_size=16, max_length=32, after_step=_zero_head_after(model, 0.5),
                    best_eligible=lambda e: e >= 4, desc="probe")
    assert [e["epoch"] for e in res.epochs] == [1, 2, 3, 4, 5, 6]
    assert res.epochs[-1]["dev_top_share"] == 1.0 and res.epochs[-1]["dev_rows"] == 60
    assert any("training on (allowed)" in r.getMessage() for r in caplog.records)


def test_a_healthy_slow_start_is_not_stopped(tokenizer, tmp_path, dev_task):
    """The data behind "the first epochs never stop a pass": this tiny model predicts one class
    for the whole dev split at epochs 1 and 2 of 4, then learns the task."""
    from passes._train import train
    res = train(make_tiny_model(), tokenizer, dev_task, _ctx(tmp_path, dev_task), epochs=4, lr=3e-3,
                batch_size=16, max_length=32, desc="slow")
    shares = [e["dev_top_share"] for e in res.epochs]
    assert shares[:2] == [1.0, 1.0] and res.epochs[-1]["dev_accuracy"] >= 0.9


def test_a_pass_that_never_learns_stops_at_its_last_epoch(tokenizer, tmp_path, dev_task):
    from passes._train import train
    with pytest.raises(CollapseError, match=r"pass 'absurd' epoch 3/3: .*at every epoch \(1-3\)"):
        train(make_tiny_model(), tokenizer, dev_task, _ctx(tmp_path, dev_task), epochs=3, lr=1.0,
              batch_size=16, max_length=32, desc="absurd")


# -- the command line, the recipe and the API ----------------------------------------------------
def _run_args(model_dir, train_tsv, eval_tsv, out, *extra):
    return ["run", str(model_dir), *extra, "--train", str(train_tsv), "--eval", str(eval_tsv),
            "--runs", "2", "--min-seconds", "0", "--batch-sizes", "1", "--seq-lens", "16",
            "--no-real-shapes", "-o", str(out), "--quiet"]


ABSURD = "finetune{epochs=2,lr=1.0,max_length=32},export"  # never learns: stops at epoch 2 of 2


def test_cli_a_collapsing_training_pass_exits_4_with_one_line(tokenizer, tmp_path, capsys):
    from compressor.cli import main
    model_dir, train_tsv, eval_tsv = write_tiny_run_inputs(tmp_path, tokenizer, n_train=200, n_eval=24)
    out = tmp_path / "run"
    code = main(_run_args(model_dir, train_tsv, eval_tsv, out, "--pipeline", ABSURD, "--dev-size", "60"))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 4 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: pass 'finetune' epoch 2/2: training collapsed to the majority class")
    assert not (out / "report.json").exists() and (out / "recipe.yaml").exists()


def test_cli_allow_collapse_trains_on_to_the_report(tokenizer, tmp_path, capsys):
    from compressor.cli import main
    model_dir, train_tsv, eval_tsv = write_tiny_run_inputs(tmp_path, tokenizer, n_train=200, n_eval=24)
    out = tmp_path / "run"
    code = main(_run_args(model_dir, train_tsv, eval_tsv, out, "--pipeline", ABSURD, "--dev-size", "60",
                          "--allow-collapse"))
    assert code == 0, capsys.readouterr().err
    assert (out / "report.json").exists()


@pytest.fixture(scope="module")
def good_teacher(tokenizer, tmp_path_factory):
    """A tiny model that learned the toy task (100% on its eval rows), saved as a folder."""
    from compressor.context import RunContext
    from passes._train import train
    task = make_toy_task(n_train=200, n_eval=24)
    root = tmp_path_factory.mktemp("teacher")
    model = make_tiny_model()
    train(model, tokenizer, task, RunContext(workdir=root / "w", data=task, progress=False, checkpoint_every=0),
          epochs=4, lr=3e-3, batch_size=16, max_length=32)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    return root / "model"


COLLAPSING = "distill{epochs=1,min_steps=0,lr=1.0,max_length=32},export"  # one epoch: no training stop


def test_cli_a_collapsed_deployment_exits_3_with_the_report_and_0_when_allowed(tokenizer, tmp_path, capsys,
                                                                               good_teacher):
    from compressor.cli import main
    model_dir, train_tsv, eval_tsv = write_tiny_run_inputs(tmp_path, tokenizer, n_train=200, n_eval=24)
    out = tmp_path / "run"
    code = main(_run_args(model_dir, train_tsv, eval_tsv, out, "--teacher", str(good_teacher),
                          "--pipeline", COLLAPSING))
    err = capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    models = report["models"]
    assert models["compressed"]["collapse"] and not models["dense"]["collapse"], models
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 3 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("error: the deployment collapsed to the majority class: eval accuracy")
    assert f"kept in {out}" in lines[0] and "--allow-collapse" in lines[0]
    assert (out / "report.md").exists() and (out / "report.html").exists()

    allowed = tmp_path / "allowed"
    code = main(_run_args(model_dir, train_tsv, eval_tsv, allowed, "--teacher", str(good_teacher),
                          "--pipeline", COLLAPSING, "--allow-collapse"))
    assert code == 0, capsys.readouterr().err
    assert json.loads((allowed / "report.json").read_text())["models"]["compressed"]["collapse"]
    from compressor.recipe import load_recipe
    assert load_recipe(allowed / "recipe.yaml")["allow_collapse"] is True


def test_recipe_and_api_take_allow_collapse(tmp_path):
    from compressor.api import _run_options, compress
    from compressor.config import RunConfig
    from compressor.recipe import check_resume, parse_recipe, recipe_dict, write_recipe
    assert parse_recipe("training: {allow_collapse: true}") == {"allow_collapse": True}
    with pytest.raises(ConfigError, match="training.allow_collapse"):
        parse_recipe("training: {allow_collapse: maybe}")
    assert recipe_dict(RunConfig(allow_collapse=True))["training"]["allow_collapse"] is True
    write_recipe(tmp_path, RunConfig(output=str(tmp_path)))
    check_resume(tmp_path, RunConfig(output=str(tmp_path), allow_collapse=True))  # a stopped run trains on
    assert "allow_collapse" in _run_options()
    with pytest.raises(ConfigError, match="allow_collapse='yes'"):
        compress("minilm", allow_collapse="yes", output=str(tmp_path / "x"))
