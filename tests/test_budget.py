"""--max-drop D: the fastest candidate whose dev accuracy stays within D, decided on dev alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.budget import BudgetError, Candidate, bisect, search


@pytest.mark.parametrize("n,last_within", [(1, 0), (5, 0), (5, 2), (5, 4), (8, 5), (5, -1)])
def test_bisect_finds_the_last_within_in_log_steps(n, last_within):
    asked = []
    best, order = bisect(n, -1, lambda i: asked.append(i) or i <= last_within)
    assert best == last_within
    assert order == asked and len(asked) <= max(1, (n + 1).bit_length())


def test_bisect_asks_the_faster_of_two_first():
    """Two candidates (the demo's ×1.41 and ×2): one recovery when the faster is within, two when not."""
    assert bisect(2, -1, lambda i: True) == (1, [1])
    assert bisect(2, -1, lambda i: i == 0) == (0, [1, 0])
    assert bisect(2, -1, lambda i: False) == (-1, [1, 0])


def test_bisect_does_not_ask_below_a_known_start():
    best, order = bisect(6, 3, lambda i: i <= 4)
    assert best == 4 and min(order) > 3


class _NoEval(list):
    """An eval split that fails the test when anything reads it."""

    def _fail(self, *a, **k):
        raise AssertionError("the --max-drop search read the eval split")

    __iter__ = __len__ = __getitem__ = __bool__ = _fail


class _Stand:
    """Stand-in candidate runner: dev accuracies from a table (pruned, deployed) per speedup."""

    table: dict = {}
    deployed: list = []

    def __init__(self, ctx, dev_only, teacher, first_index):
        assert dev_only.eval == []  # candidates run without the eval split
        self.ctx = ctx

    def screen(self, c: Candidate) -> None:
        c.dev_pruned, c.measured = self.table[c.speedup][0], c.speedup * 0.95

    def deploy(self, c: Candidate, dense_dev: float, max_drop: float) -> bool:
        self.deployed.append(c.speedup)
        c.dev_deployed, c.artifacts = self.table[c.speedup][1], ("torch", "onnx", "fp32")
        return (dense_dev - c.dev_deployed) * 100 <= max_drop


@pytest.fixture
def teacher_ctx(tmp_path, tokenizer, monkeypatch):
    """A stand-in teacher at 90% dev accuracy on a balanced dev split (majority 50%)."""
    import compressor.evaluation
    monkeypatch.setattr(compressor.evaluation, "evaluate", lambda model, tok, rows, n, **kw: 0.9)
    from compressor.context import RunContext
    from compressor.data import Example, TaskData
    from compressor.artifact import TorchModel
    from tests.conftest import make_tiny_model
    dev = [Example(f"text {i}", i % 2) for i in range(20)]
    data = TaskData("stand-in", train=dev, eval=_NoEval(), label_names=["0", "1"], dev=dev)
    teacher = TorchModel(make_tiny_model(), tokenizer, {})
    return teacher, RunContext(workdir=tmp_path, data=data)


def _cfg(d):
    from types import SimpleNamespace
    return SimpleNamespace(max_drop=d, max_length=16)


def _dense(teacher, ctx):
    return 0.9


def test_search_picks_the_fastest_within_on_dev_and_never_reads_eval(teacher_ctx):
    teacher, ctx = teacher_ctx
    dense = _dense(teacher, ctx)
    ladder = (1.5, 2.0, 3.0, 4.0, 6.0)
    # pruned / deployed dev accuracy: recovery brings 2x and 3x back within 1 point, not 4x or 6x
    _Stand.table = {1.5: (dense - 0.005, dense), 2.0: (dense - 0.03, dense - 0.005), 3.0: (dense - 0.1, dense - 0.009),
                    4.0: (dense - 0.2, dense - 0.04), 6.0: (dense - 0.3, dense - 0.1)}
    _Stand.deployed = []
    records, artifacts, summary = search(_cfg(1.0), ctx, teacher, lambda x: [], 2, ladder=ladder, runner=_Stand)
    assert summary["chosen_speedup"] == 3.0 and artifacts == ("torch", "onnx", "fp32")
    rows = {r["speedup_asked"]: r for r in summary["candidates"]}
    assert rows[3.0]["chosen"] and not rows[2.0]["chosen"]
    assert rows[4.0]["within"] is False and rows[3.0]["within"] is True
    # 1.5 is within before recovery, so the bisection only asks faster ones, and not all of them
    assert 1.5 not in _Stand.deployed and len(_Stand.deployed) <= 3
    assert ctx.state["max_drop_search"] is summary


def test_screening_stops_at_a_retraining_free_collapse(teacher_ctx):
    from compressor.metrics import majority_accuracy
    teacher, ctx = teacher_ctx
    dense, majority = _dense(teacher, ctx), majority_accuracy(ctx.data.dev)
    _Stand.table = {1.5: (dense, dense), 2.0: (majority, dense), 3.0: (dense, dense)}
    _Stand.deployed = []
    _, _, summary = search(_cfg(50.0), ctx, teacher, lambda x: [], 2, ladder=(1.5, 2.0, 3.0), runner=_Stand)
    assert [r["speedup_asked"] for r in summary["candidates"]] == [1.5, 2.0]  # 3.0 never screened
    assert "collapse" in summary["candidates"][1]["note"]


def test_no_candidate_within_is_a_budget_error_with_every_try(teacher_ctx):
    teacher, ctx = teacher_ctx
    dense = _dense(teacher, ctx)
    _Stand.table = {1.5: (dense - 0.05, dense - 0.02), 2.0: (dense - 0.08, dense - 0.04)}
    _Stand.deployed = []
    with pytest.raises(BudgetError, match=r"--max-drop 1: no candidate keeps the dev accuracy within 1 point") as e:
        search(_cfg(1.0), ctx, teacher, lambda x: [], 2, ladder=(1.5, 2.0), runner=_Stand)
    assert e.value.exit_code == 3 and "×1.5" in str(e.value)
    assert len(ctx.state["max_drop_search"]["candidates"]) == 2


def test_max_drop_conflicts_are_refused_by_name():
    from compressor.config import RunConfig
    from compressor.errors import ConfigError
    with pytest.raises(ConfigError, match="searches the speedup itself: drop --speedup"):
        RunConfig(max_drop=1.0, speedup=2.0).validate()
    with pytest.raises(ConfigError, match="max_drop"):
        RunConfig(max_drop=-1.0).validate()


def test_max_drop_needs_a_method_that_prunes_without_training(tmp_path):
    from compressor.cli import main
    code = main(["run", "minilm", "--method", "magnitude", "--max-drop", "1", "-o", str(tmp_path / "o")])
    assert code == 2 and not (tmp_path / "o").exists()


def test_compress_run_max_drop_end_to_end(tmp_path):
    """The whole run on a tiny model: candidates in their own folders, the chosen one's steps are
    the run's, the report lists every candidate, the chosen speedup is what the gate judges."""
    from compressor.cli import main
    from tests.conftest import write_tiny_run_inputs
    model_dir, train, eval_ = write_tiny_run_inputs(tmp_path / "in", n_train=48, n_eval=24)
    out = tmp_path / "run"
    code = main(["run", str(model_dir), "--train", str(train), "--eval", str(eval_), "--method", "fisher",
                 "--method-option", "samples=64", "--method-option", "latency_runs=2", "--method-option",
                 "calibrate=1", "--max-drop", "100", "--recover", "--epochs", "1", "--runs", "3",
                 "--batch-sizes", "1", "--seq-lens", "16", "--allow-collapse", "-o", str(out), "-q"])
    assert code in (0, 3)  # 3: the tiny model missed the chosen speedup's gate (timing noise)
    doc = json.loads((out / "report.json").read_text())
    search_ = doc["run"]["max_drop"]
    chosen = [c for c in search_["candidates"] if c["chosen"]]
    assert len(chosen) == 1 and doc["run"]["speedup_asked"] == chosen[0]["speedup_asked"]
    assert chosen[0]["dev_accuracy_deployed"] is not None
    steps = doc["steps"]
    assert steps[0]["name"] == "finetune" and steps[1]["name"] == "fisher"
    assert Path(steps[1]["folder"]).parent == Path(chosen[0]["folder"])  # the candidate's own folder
    assert (out / "latency-tables").is_dir() and not list(out.glob("candidates/*/latency-tables"))
    assert "Accuracy budget" in (out / "report.md").read_text()
