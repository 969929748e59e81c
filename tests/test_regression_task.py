"""Regression tasks (float labels) through the whole path: detection and ``--task-type``, a
one-output head trained with MSE, KD as MSE to the teacher, Pearson/Spearman as the task metric
(dev selection, ONNX scoring, report), and the collapse checks. The tiny task's score is a count of
a marker token, which a tiny model learns."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest

from compressor.data import Example, TaskData, detect_task_type, load_files, load_task
from compressor.errors import CompressorError, DataError
from compressor.metrics import (average_ranks, clearly_above, deployment_collapse, is_regression,
                                majority_accuracy, pearson, regression_scores, spearman,
                                training_collapse)

MARKER = "good"
FILLER = ["the", "film", "was", "a", "plot", "story", "it", "and"]


def count_row(rng: random.Random, scale: float) -> Example:
    """A sentence with 0-4 marker words among 4 fillers; its score is ``scale`` x the count."""
    k = rng.randint(0, 4)
    words = [MARKER] * k + rng.sample(FILLER, 4)
    rng.shuffle(words)
    return Example(" ".join(words), scale * k)


def make_count_task(n_train=96, n_eval=48, seed=0, scale=1.5) -> TaskData:
    rng = random.Random(seed)
    return TaskData("count", [count_row(rng, scale) for _ in range(n_train)],
                    [count_row(rng, scale) for _ in range(n_eval)], ["score"], task_type="regression")


def write_scores(path: Path, rows, label=lambda e: f"{e.label:g}") -> Path:
    path.write_text("sentence\tlabel\n" + "".join(f"{e.text}\t{label(e)}\n" for e in rows))
    return path


# -- metrics, against hand-computed values -----------------------------------------------------
def test_pearson_hand_computed():
    # x = 1,2,3,4; y = 2,4,5,4: dx = -1.5,-.5,.5,1.5; dy = -1.75,.25,1.25,.25
    # sxy = 2.625 + -.125 + .625 + .375 = 3.5; sxx = 5; syy = 3.0625 + .0625 + 1.5625 + .0625 = 4.75
    assert pearson([1, 2, 3, 4], [2, 4, 5, 4]) == pytest.approx(3.5 / math.sqrt(5 * 4.75))
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


def test_pearson_undefined_is_zero():
    assert pearson([0.5, 0.5, 0.5], [1, 2, 3]) == 0.0  # a constant prediction: the trivial level
    assert pearson([1, 2, 3], [4, 4, 4]) == 0.0
    assert pearson([1.0], [2.0]) == 0.0 and pearson([], []) == 0.0
    assert pearson([1, float("nan"), 3], [1, 2, 3]) == 0.0
    with pytest.raises(ValueError):
        pearson([1, 2], [1, 2, 3])


def test_average_ranks_ties():
    assert average_ranks([10, 20, 20, 30]) == [1, 2.5, 2.5, 4]
    assert average_ranks([3, 1, 3, 3, 2]) == [4, 1, 4, 4, 2]  # three tied at ranks 3, 4, 5
    assert average_ranks([]) == []


def test_spearman_hand_computed_with_ties():
    # ranks x = 1,2,3,4,5; y = [1, 2.5, 2.5, 4, 5]: Pearson's r of the ranks
    # dx = -2,-1,0,1,2 (sxx 10); dy = -2,-.5,-.5,1,2 (syy 9.5); sxy = 4 + .5 + 0 + 1 + 4 = 9.5
    assert spearman([1, 2, 3, 4, 5], [1, 7, 7, 8, 9]) == pytest.approx(9.5 / math.sqrt(10 * 9.5))
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)  # monotone: 1, Pearson is not
    assert pearson([1, 2, 3, 4], [1, 4, 9, 16]) < 1.0
    assert spearman([2, 2, 2], [1, 2, 3]) == 0.0


def test_metrics_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    x = [rng.choice([0.0, 0.5, 1.0, 1.5]) for _ in range(40)]  # many ties
    y = [v + rng.gauss(0, 0.5) for v in x]
    scores = regression_scores(x, y)
    assert scores["pearson"] == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert scores["spearman"] == pytest.approx(stats.spearmanr(x, y)[0], abs=1e-12)


def test_trivial_baseline_and_collapse_rules():
    rows = [Example("a", 1.5), Example("b", 3.0)]
    assert is_regression(rows) and not is_regression([Example("a", 1)])
    assert majority_accuracy(rows) == 0.0  # predicting the train mean: r counts as 0
    assert majority_accuracy([Example("a", 1), Example("b", 1), Example("c", 0)]) == pytest.approx(2 / 3)
    # r must clear two standard errors of r between unrelated variables (1/sqrt(n))
    assert not clearly_above(0.2, 0.0, 100, metric="pearson") and clearly_above(0.25, 0.0, 100, metric="pearson")
    assert clearly_above(0.2, 0.0, 100)  # the accuracy rule at a majority of 0 would have passed it
    assert deployment_collapse(0.005, 0.8, 0.0, 100, metric="pearson").startswith("Pearson r 0.0050")
    assert deployment_collapse(0.3, 0.8, 0.0, 100, metric="pearson") is None


def _epoch(epoch, r, rows=60):
    return {"epoch": epoch, "dev_accuracy": r, "dev_majority": 0.0, "dev_rows": rows, "dev_top_class": None,
            "dev_top_share": None, "dev_metric": "pearson"}


def test_training_collapse_on_regression_records():
    # a model slowly learning (r below 2/sqrt(60) = 0.26 at first) is never stopped
    assert training_collapse([_epoch(1, 0.1), _epoch(2, 0.005)], 4) is None
    assert training_collapse([_epoch(1, 0.2), _epoch(2, 0.3), _epoch(3, 0.5)], 3) is None
    # learned, then a constant prediction (r 0): a collapse
    assert training_collapse([_epoch(1, 0.6), _epoch(2, 0.0)], 4) == "after 60.00% at epoch 1"
    assert training_collapse([_epoch(1, 0.0), _epoch(2, 0.0)], 2) == "at every epoch (1-2)"


def test_pearson_bootstrap_intervals():
    from compressor.stats import paired_bootstrap_pearson, pearson_interval
    rng = random.Random(0)
    y = [rng.gauss(0, 1) for _ in range(80)]
    a = [v + rng.gauss(0, 0.3) for v in y]
    b = [v + rng.gauss(0, 1.0) for v in y]
    low, high = pearson_interval(a, y, resamples=2000)
    assert low <= pearson(a, y) <= high < 1
    d = paired_bootstrap_pearson(a, b, y, resamples=2000)
    assert d["diff"] == pytest.approx(pearson(a, y) - pearson(b, y)) and d["low"] <= d["diff"] <= d["high"]
    assert d["low"] > 0 and d["n"] == 80 and "a_only" not in d
    same = paired_bootstrap_pearson(a, a, y, resamples=200)
    assert (same["diff"], same["low"], same["high"]) == (0.0, 0.0, 0.0)


# -- data: detection, --task-type, contradictions -------------------------------------------
def test_float_labels_are_detected_as_regression(tmp_path):
    task = make_count_task(n_train=20, n_eval=10)
    data = load_files(write_scores(tmp_path / "train.tsv", task.train), write_scores(tmp_path / "eval.tsv", task.eval))
    assert data.task_type == "regression" and data.regression
    assert data.num_labels == 1 and data.label_names == ["score"]
    assert all(isinstance(e.label, float) for e in data.train + data.eval)
    assert [e.label for e in data.train] == [e.label for e in task.train]
    assert data.info["train_label_mean"] == pytest.approx(sum(e.label for e in task.train) / 20)


def test_detection_rules():
    assert detect_task_type(["3.867", "0", "5", "0.00"]) == "regression"  # the STS file
    assert detect_task_type(["0", "1", "2"]) == "classification"  # class ids stay classes
    assert detect_task_type(["1.0", "0.0"]) == "classification"  # whole numbers: classes, as before
    assert detect_task_type(["pos", "0.5"]) == "classification"
    assert detect_task_type(["nan", "0.5"]) == "classification"  # not a finite number
    assert detect_task_type(["0", "1"], "regression") == "regression"
    assert detect_task_type(["0.5", "1.5"], "classification") == "classification"


def test_task_type_regression_reads_whole_numbers_as_scores(tmp_path):
    task = make_count_task(n_train=20, n_eval=10, scale=1.0)
    train, evals = write_scores(tmp_path / "t.tsv", task.train), write_scores(tmp_path / "e.tsv", task.eval)
    assert load_files(train, evals).task_type == "classification"  # counts 0..4 read as classes
    data = load_task(train_file=str(train), eval_file=str(evals), task_type="regression")
    assert data.regression and data.train[0].label == float(task.train[0].label)


def test_non_numeric_label_with_regression_is_one_line(tmp_path):
    rows = [Example("a b", 1.5), Example("c d", 2.5), Example("e f", 0.5)]
    train = write_scores(tmp_path / "t.tsv", rows, label=lambda e: "high" if e.text == "c d" else f"{e.label:g}")
    evals = write_scores(tmp_path / "e.tsv", rows)
    with pytest.raises(DataError) as err:
        load_files(train, evals, task_type="regression")
    message = str(err.value)
    assert "'high'" in message and "t.tsv" in message and "\n" not in message
    assert isinstance(err.value, CompressorError) and err.value.exit_code == 2
    # a detected regression task (train scores) with a non-number in the eval file: the same line
    bad_eval = write_scores(tmp_path / "e2.tsv", rows, label=lambda e: "n/a" if e.text == "a b" else f"{e.label:g}")
    with pytest.raises(DataError, match=r"label 'n/a' in '.*e2.tsv' is not a number"):
        load_files(write_scores(tmp_path / "t2.tsv", rows), bad_eval)


def test_named_task_contradiction_is_refused_before_reading(monkeypatch):
    import compressor.data as data_mod
    monkeypatch.setattr(data_mod, "load_rotten_tomatoes", lambda: pytest.fail("read the data"))
    with pytest.raises(DataError, match="--task-type regression contradicts task 'rotten-tomatoes'"):
        load_task("rotten-tomatoes", task_type="regression")
    with pytest.raises(CompressorError, match="task type 'ordinal' is not allowed"):
        load_task("rotten-tomatoes", task_type="ordinal")


def test_cli_contradiction_exit_2_one_line(tmp_path, capsys):
    from compressor.cli import main
    from tests.conftest import write_tiny_run_inputs
    model_dir, train_tsv, eval_tsv = write_tiny_run_inputs(tmp_path / "in", n_train=16, n_eval=8)
    text = train_tsv.read_text().splitlines()
    text[1] = text[1].rsplit("\t", 1)[0] + "\tpositive"
    train_tsv.write_text("\n".join(text) + "\n")
    capsys.readouterr()  # the setup's output (transformers 5.x: progress bars of save_pretrained)
    code = main(["run", str(model_dir), "--train", str(train_tsv), "--eval", str(eval_tsv), "--task-type",
                 "regression", "-o", str(tmp_path / "out"), "-q"])
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.strip()]
    assert code == 2 and len(err) == 1 and "'positive'" in err[0] and "not a number" in err[0], err
    code = main(["run", str(model_dir), "--train", str(train_tsv), "--eval", str(eval_tsv), "--task-type",
                 "ordinal", "-o", str(tmp_path / "out2"), "-q"])
    assert code == 2


def test_recipe_reads_task_type():
    from compressor.recipe import parse_recipe
    assert parse_recipe("model: minilm\ndata: {task_type: regression}\n")["task_type"] == "regression"


def test_dev_split_of_a_regression_task_is_stratified_by_quintile():
    task = make_count_task(n_train=100, n_eval=10)
    split = task.carve_dev(20, seed=1)
    assert split.regression and len(split.dev) == 20 and len(split.train) == 80
    assert split.info["dev_split"].startswith("stratified by label quintile")
    mean = lambda rows: sum(e.label for e in rows) / len(rows)  # noqa: E731
    assert len({e.label for e in split.dev}) >= 4 and abs(mean(split.dev) - mean(task.train)) < 0.5
    assert split.subsample(max_train=10).task_type == "regression"


# -- head, losses and training --------------------------------------------------------------
def _save_tiny(folder: Path, tokenizer, num_labels=2) -> Path:
    from tests.conftest import make_tiny_model
    make_tiny_model(num_labels=num_labels).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_load_model_regression_head(tmp_path, tokenizer):
    from compressor.errors import ModelError
    from compressor.models import load_model
    folder = _save_tiny(tmp_path / "tiny", tokenizer)
    tm = load_model(str(folder), num_labels=1, label_names=["score"], problem_type="regression")
    assert tm.model.config.num_labels == 1 and tm.model.config.problem_type == "regression"
    with pytest.raises(CompressorError, match="num_labels=1 is out of range"):
        load_model(str(folder), num_labels=1)  # one output must be asked for as regression
    with pytest.raises(ModelError, match="one output"):
        load_model(str(folder), num_labels=2, problem_type="regression")
    tm.model.save_pretrained(tmp_path / "reg")
    tokenizer.save_pretrained(tmp_path / "reg")
    back = load_model(str(tmp_path / "reg"), num_labels=2)  # a regressor loaded as a classifier
    assert back.model.config.num_labels == 2 and back.model.config.problem_type is None


def test_kd_and_task_losses_are_mse_for_one_output():
    import torch
    import torch.nn.functional as F
    from passes._distill import LogitKD, kd_kl, soft_cross_entropy, task_loss
    z_s, z_t = torch.tensor([[0.5], [1.0], [-2.0]]), torch.tensor([[1.0], [1.0], [0.0]])
    mse = (0.25 + 0 + 4) / 3
    assert float(kd_kl(z_s, z_t, 2.0)) == pytest.approx(mse)
    assert float(soft_cross_entropy(z_s, z_t)) == pytest.approx(mse)
    labels = torch.tensor([1.0, -1.0, -2.0])  # negative scores are labels, not "unlabelled"
    assert float(task_loss(z_s, labels)) == pytest.approx((0.25 + 4 + 0) / 3)
    kd = LogitKD(z_t, hardness=0.5)
    batch = {"idx": torch.tensor([0, 1, 2]), "labels": labels}
    out = type("Out", (), {"logits": z_s})()
    assert float(kd(None, batch, out)) == pytest.approx(0.5 * mse + 0.5 * (0.25 + 4 + 0) / 3)
    two = torch.tensor([[0.2, 0.8]])  # classification is unchanged: KL on the softmax
    assert float(kd_kl(two, two.flip(-1), 1.0)) == pytest.approx(float(F.kl_div(
        F.log_softmax(two, -1), F.log_softmax(two.flip(-1), -1), reduction="batchmean", log_target=True)))


def test_cap_objective_on_one_output():
    import torch
    from passes.cap.contrastive import CapObjective
    obj = CapObjective(torch.tensor([0.5, 1.5, 3.0]), w_ce=1.0, w_kd=1.0)
    z = torch.tensor([[0.5], [1.0], [2.0]], requires_grad=True)
    loss = obj(z, torch.tensor([0.5, 1.5, 3.0]), teacher_logits=torch.tensor([[0.5], [1.0], [2.0]]))
    assert float(loss.detach()) == pytest.approx((0 + 0.25 + 1) / 3) and obj.last["kd"] == 0.0
    loss.backward()


def _train_teacher(tokenizer, task, epochs=12, lr=2e-3):
    """A tiny regression model fine-tuned on ``task`` (the run's ``train``, high LR: seconds)."""
    from compressor.artifact import TorchModel
    from compressor.context import RunContext
    from passes._train import train
    import tempfile

    from tests.conftest import make_tiny_model
    model = make_tiny_model(num_labels=1)
    model.config.problem_type = "regression"
    with tempfile.TemporaryDirectory() as tmp:
        ctx = RunContext(Path(tmp), data=task, progress=False)
        res = train(model, tokenizer, task, ctx, epochs=epochs, lr=lr, batch_size=16, max_length=24,
                    checkpoint_every=0)
    return TorchModel(model, tokenizer, {"source": "tiny-regression"}), res


@pytest.fixture(scope="module")
def count_task():
    return make_count_task(n_train=160, n_eval=48).carve_dev(32, seed=0)


@pytest.fixture(scope="module")
def teacher(tokenizer, count_task):
    return _train_teacher(tokenizer, count_task)


def test_training_learns_the_count_with_pearson_selection(teacher, count_task):
    from compressor.evaluation import evaluate
    tm, res = teacher
    assert res.selection == "dev" and res.best_accuracy == max(e["dev_accuracy"] for e in res.epochs)
    last = res.epochs[-1]
    assert last["dev_metric"] == "pearson" and -1 <= last["dev_spearman"] <= 1
    assert last["dev_top_share"] is None and last["dev_majority"] == 0.0
    assert res.epochs[-1]["loss"] < res.epochs[0]["loss"]  # MSE goes down
    r = evaluate(tm.model, tm.tokenizer, count_task.eval, 24)
    assert r == pytest.approx(res.accuracy, abs=1e-6) and r > 0.8, r


def test_fisher_importance_from_the_regression_loss(teacher, count_task):
    """fisher's mask gradients use the model's own loss with the float labels (MSE)."""
    from tests.conftest import fisher_mask_gradients
    gh, _ = fisher_mask_gradients(teacher[0].model, teacher[0].tokenizer, count_task.train[:32])
    assert gh.shape[0] == 2 and float(gh.abs().sum()) > 0 and bool(gh.isfinite().all())


# -- the whole run ---------------------------------------------------------------------------
def _run_args(root: Path, out: Path, *extra) -> list[str]:
    return ["run", str(root / "tiny"), "--train", str(root / "train.tsv"), "--eval", str(root / "eval.tsv"),
            "--max-length", "24", "--runs", "2", "--batch-sizes", "1", "--seq-lens", "16", "-o", str(out), "-q",
            *extra]


@pytest.fixture(scope="module")
def run_inputs(tmp_path_factory, tokenizer, teacher, count_task):
    root = tmp_path_factory.mktemp("regression-run")
    _save_tiny(root / "tiny", tokenizer, num_labels=2)  # a classifier checkpoint: the head is replaced
    task = make_count_task(n_train=160, n_eval=48)  # the teacher's data (same seed)
    write_scores(root / "train.tsv", task.train)
    write_scores(root / "eval.tsv", task.eval)
    write_scores(root / "train-int.tsv", task.train, label=lambda e: f"{round(e.label / 1.5)}")
    write_scores(root / "eval-int.tsv", task.eval, label=lambda e: f"{round(e.label / 1.5)}")
    teacher[0].model.save_pretrained(root / "teacher")
    tokenizer.save_pretrained(root / "teacher")
    return root


def _check_report(out: Path) -> dict:
    report = json.loads((out / "report.json").read_text())
    data, models = report["data"], report["models"]
    assert data["task_type"] == "regression" and data["metric_name"] == "pearson"
    assert data["num_labels"] == 1 and data["label_names"] == ["score"] and data["majority_accuracy"] == 0.0
    for label in ("dense", "dense-int8", "compressed", "compressed-fp32"):
        m = models[label]
        assert m["metric_name"] == "pearson", label
        assert -1 <= m["accuracy_onnx"] <= 1 and -1 <= m["spearman_onnx"] <= 1, label
        low, high = m["accuracy_interval"]
        assert low <= m["accuracy_onnx"] <= high, label
    fp32 = models["compressed-fp32"]
    assert abs(fp32["accuracy_onnx"] - fp32["accuracy_torch"]) < 1e-3  # ONNX = torch on the same rows
    paired = models["compressed"]["versus_paired"]["dense-int8"]
    assert paired["low"] <= paired["points"] <= paired["high"] and "compressed_only" not in paired
    schema = json.loads((Path(__file__).parents[1] / "compressor" / "schema" / "report.schema.json").read_text())
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(report, schema)
    md = (out / "report.md").read_text()
    assert "Pearson r (ONNX)" in md and "Spearman (ONNX)" in md and "predicting the train mean" in md
    assert "Pearson r points" in report["summary"]["versus_dense_int8"]["verdict"]
    return report


def test_run_magnitude_detected_regression(run_inputs, tmp_path):
    """Float scores detected, the dense model fine-tuned here (MSE), magnitude with KD (MSE to the
    teacher), export, INT8, scored in Pearson/Spearman, the report."""
    from compressor.cli import main
    out = tmp_path / "run"
    code = main(_run_args(run_inputs, out, "--method", "magnitude", "--sparsity", "0.5", "--allow-collapse"))
    assert code == 0
    report = _check_report(out)
    steps = [s["name"] for s in report["steps"]]
    assert steps[:2] == ["finetune", "magnitude"] and "export" in steps
    finetune = report["steps"][0]["metrics"]
    assert finetune["best_accuracy"] == max(finetune["dev_accuracy_per_epoch"])  # chosen by dev Pearson
    assert report["models"]["dense"]["accuracy_onnx"] > 0.3  # the dense model learned the count
    assert abs(report["models"]["compressed"]["sparsity"] - 0.5) < 0.01


def test_run_fisher_with_task_type_and_teacher(run_inputs, tmp_path):
    """Whole-number scores named as regression, a fine-tuned teacher: fisher's importance from the
    MSE loss, mask tuning, strip, recovery by KD, and a deployment that keeps most of dense's r."""
    from compressor.cli import main
    out = tmp_path / "run"
    args = _run_args(run_inputs, out, "--method", "fisher", "--task-type", "regression", "--teacher",
                     str(run_inputs / "teacher"), "--method-option", "samples=64", "--recover", "--epochs", "2")
    args[3], args[5] = str(run_inputs / "train-int.tsv"), str(run_inputs / "eval-int.tsv")
    code = main(args)
    assert code == 0
    report = _check_report(out)
    assert [s["name"] for s in report["steps"]][:2] == ["fisher", "distill"]
    models = report["models"]
    assert models["dense"]["accuracy_onnx"] > 0.8
    assert models["compressed-fp32"]["accuracy_onnx"] > 0.5 and not models["compressed"]["collapse"]


@pytest.mark.parametrize("method", ["cap", "nip", "rpp", "sparsebert"])
def test_every_other_method_runs_on_regression(run_inputs, tmp_path, method):
    """The remaining methods train a one-output model through the same loss helpers (KD as MSE;
    CAP without its supervised contrastive term) and reach a scored report."""
    from compressor.cli import main
    out = tmp_path / "run"
    code = main(_run_args(run_inputs, out, "--method", method, "--sparsity", "0.5", "--epochs", "1", "--teacher",
                          str(run_inputs / "teacher"), "--allow-collapse"))
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["metric_name"] == "pearson" and report["steps"][0]["name"] == method
    assert all(-1 <= m["accuracy_onnx"] <= 1 for m in report["models"].values())


def test_accuracy_check_of_onnx_passes_one_means_never(monkeypatch, tmp_path):
    """Pearson's r can drop by more than 1: ``max_accuracy_drop=1`` still never fails a step."""
    import compressor.onnx_utils as ou
    from compressor.context import RunContext
    ctx = RunContext(tmp_path, data=make_count_task(n_train=4, n_eval=4))
    scores = iter([0.9, -0.2, 0.9, -0.2])
    monkeypatch.setattr(ou, "onnx_accuracy", lambda *a, **k: next(scores))
    assert ou.accuracy_change("a", "b", ctx, 24, None, 1.0, "INT8")["accuracy_drop"] == pytest.approx(1.1)
    with pytest.raises(ou.VerificationError, match="more than max_accuracy_drop=0.5"):
        ou.accuracy_change("a", "b", ctx, 24, None, 0.5, "INT8")
