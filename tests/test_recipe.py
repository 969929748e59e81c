"""Recipes: YAML settings with the CLI's grammar, flags overriding them, unknown keys rejected by
name, every run writing its own complete recipe, and a re-run from it reproducing the run."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compressor.cli import main
from compressor.config import RunConfig
from compressor.errors import ConfigError
from compressor.recipe import dump_recipe, parse_recipe, recipe_values
from compressor.run import check_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    from tests.conftest import write_tiny_run_inputs
    root = tmp_path_factory.mktemp("inputs")
    write_tiny_run_inputs(root, n_train=64, n_eval=16, seed=2)
    return root


def test_recipe_run_writes_its_recipe_and_a_rerun_reproduces_it(tiny_inputs, tmp_path, monkeypatch):
    monkeypatch.chdir(tiny_inputs)  # relative paths in a recipe are taken from the current folder
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": "tiny", "seed": 3,
        "data": {"train": "train.tsv", "eval": "eval.tsv", "max_length": 16},
        "pipeline": [{"magnitude": {"sparsity": 0.6, "epochs": 2, "lr": 0.002, "max_length": 16}}, "export"],
        "profile": {"batch_sizes": [1], "seq_lens": [8], "runs": 1, "real_shapes": False},
        "output": str(tmp_path / "ignored"),
    }, sort_keys=False))
    first, second = tmp_path / "first", tmp_path / "second"
    assert main(["run", "--recipe", str(recipe), "-o", str(first), "-q"]) == 0  # -o overrides output
    assert not (tmp_path / "ignored").exists()
    written = yaml.safe_load((first / "recipe.yaml").read_text())
    assert written["model"] == str(tiny_inputs / "tiny")  # resolved to an absolute path
    assert written["data"]["train"] == str(tiny_inputs / "train.tsv") and written["data"]["task"] is None
    assert written["pipeline"] == "magnitude{sparsity=0.6,epochs=2,lr=0.002,max_length=16},export"
    assert written["seed"] == 3 and written["output"] == str(first)
    assert set(written) >= {"model", "seed", "data", "method", "pipeline", "training", "targets", "profile"}

    monkeypatch.chdir(tmp_path)  # the written recipe works from anywhere
    assert main(["run", "--recipe", str(first / "recipe.yaml"), "-o", str(second), "-q"]) == 0
    a, b = (json.loads((d / "report.json").read_text()) for d in (first, second))
    assert a["run"]["pipeline"] == b["run"]["pipeline"] and a["run"]["seed"] == b["run"]["seed"] == 3
    for sa, sb in zip(a["steps"], b["steps"]):
        for key in ("accuracy", "sparsity", "accuracy_per_epoch", "mask_updates"):
            assert sb["metrics"].get(key) == pytest.approx(sa["metrics"].get(key), abs=1e-6), key
    assert b["models"]["compressed"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert b["models"]["compressed"]["accuracy_onnx"] == pytest.approx(a["models"]["compressed"]["accuracy_onnx"])
    second_recipe = yaml.safe_load((second / "recipe.yaml").read_text())
    assert {**second_recipe, "output": None} == {**written, "output": None}


def _captured_config(monkeypatch, argv) -> RunConfig:
    """The RunConfig `compress run` would run with (the run itself is replaced)."""
    seen = {}

    class Stop(Exception):
        pass

    def fake_run(cfg):
        seen["cfg"] = cfg
        raise Stop

    monkeypatch.setattr("compressor.run.run", fake_run)
    with pytest.raises(Stop):
        main(argv)
    return seen["cfg"]


def test_cli_flags_override_recipe_values(tmp_path, monkeypatch):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: minilm\nmethod: {name: nip, sparsity: 0.7, options: {steps: 3}}\n"
                      "data: {max_train: 100}\nprofile: {batch_sizes: [1, 4], runs: 5}\n"
                      "gates: {min_retention: 0.9}\ntraining: {num_processes: 2}\n")
    cfg = _captured_config(monkeypatch, ["run", "--recipe", str(recipe), "--sparsity", "0.5",
                                         "--runs", "7", "--min-speedup", "1.5", "-o", str(tmp_path / "o")])
    assert (cfg.model, cfg.method, cfg.sparsity, cfg.runs) == ("minilm", "nip", 0.5, 7)  # flags win
    assert cfg.max_train == 100 and cfg.batch_sizes == (1, 4) and cfg.num_processes == 2  # recipe kept
    assert cfg.method_options == {"steps": "3"}
    assert cfg.gates == {"min_retention": 0.9, "min_speedup": 1.5}  # gate flags add to the recipe's
    assert cfg.output == str(tmp_path / "o") and not cfg.trust_remote_code
    cfg = _captured_config(monkeypatch, ["run", "bert-base", "--recipe", str(recipe), "--num-processes", "1",
                                         "--method-option", "steps=5", "--trust-remote-code"])
    assert cfg.model == "bert-base" and cfg.num_processes == 1 and cfg.method_options == {"steps": "5"}
    assert cfg.trust_remote_code


def test_resume_takes_the_settings_of_the_output_folder(tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "recipe.yaml").write_text(dump_recipe(RunConfig(model="minilm", sparsity=0.75, seed=5,
                                                            output=str(out))))
    cfg = _captured_config(monkeypatch, ["run", "--resume", "-o", str(out)])
    assert (cfg.model, cfg.sparsity, cfg.seed, cfg.resume) == ("minilm", 0.75, 5, True)


def test_check_resume_names_changed_settings(tmp_path):
    from compressor.recipe import check_resume, write_recipe
    write_recipe(tmp_path, RunConfig(sparsity=0.9, output=str(tmp_path)))
    check_resume(tmp_path, RunConfig(sparsity=0.9, num_processes=2, output=str(tmp_path)))  # may differ
    with pytest.raises(ConfigError, match=r"sparsity 0.9 -> 0.5"):
        check_resume(tmp_path, RunConfig(sparsity=0.5, output=str(tmp_path)))


def test_resume_reads_a_setting_the_older_recipe_lacks_as_its_default(tmp_path):
    from compressor.recipe import RECIPE_NAME, check_resume, write_recipe
    path = write_recipe(tmp_path, RunConfig(output=str(tmp_path)))
    older = path.read_text().replace("  hidden_width: 0\n", "")  # written before the setting existed
    assert older != path.read_text()
    (tmp_path / RECIPE_NAME).write_text(older)
    check_resume(tmp_path, RunConfig(output=str(tmp_path)))  # it ran at the default: same settings
    with pytest.raises(ConfigError, match=r"hidden_width 0 -> 128"):
        check_resume(tmp_path, RunConfig(hidden_width=128, output=str(tmp_path)))


def test_written_recipe_round_trips_every_setting():
    cfg = RunConfig(model="minilm", method="rpp", sparsity=0.8, granularity="structured", seed=7,
                    max_train=50, epochs=2, batch_sizes=(1, 2), seq_lens=(16,), runs=3,
                    sparse_init=False, gates={"min_retention": 0.95}, num_processes=2,
                    checkpoint_every=50, method_options={"reweight_every": "5"})
    values = parse_recipe(dump_recipe(cfg))
    fields = {k: getattr(cfg, k) for k in values if k != "output"}
    assert {k: v for k, v in values.items() if k != "output"} == fields
    assert "trust_remote_code" not in values and "resume" not in values


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid_recipes(path):
    from compressor.pipeline import Pipeline
    from compressor.run import method_spec
    values = parse_recipe(path.read_text(), str(path))
    cfg = RunConfig(**values)
    check_config(cfg)
    Pipeline(cfg.pipeline or method_spec(cfg)).check("torch")
    assert "output" in values and "model" in values


@pytest.mark.parametrize("text, fragment", [
    ("model: minilm\nsparsity: 0.9\n", "unknown key 'sparsity': allowed data, export"),
    ("data: {tsk: x}\n", "unknown key 'data.tsk': allowed columns, contrastive, dev_size, doc_stride, eval, max_eval"),
    ("trust_remote_code: true\n", "pass --trust-remote-code on the command line"),
    ("seed: abc\n", "seed='abc' must be an integer"),
    ("method: {sparsity: high}\n", "method.sparsity='high' must be a number"),
    ("profile: {batch_sizes: [1, x]}\n", "must be a list of integers"),
    ("data: [1, 2]\n", "'data' must be a mapping"),
    ("- a\n- b\n", "must be a mapping of keys"),
    ("", "is empty"),
    ("model: [unclosed\n", "is not valid YAML at line"),
    ("pipeline: [{magnitude: {sparsity: '0.9}'}}]\n", "without , { } ="),
    ("method: {options: {'bad key': 1}}\n", "option names"),
    ("seed: 2001-01-01\n", "must be an integer"),
])
def test_bad_recipes_name_the_key(text, fragment):
    with pytest.raises(ConfigError) as info:
        parse_recipe(text, "r.yaml")
    assert fragment in str(info.value) and "\n" not in str(info.value)


# -- fuzzing -----------------------------------------------------------------------------------
_scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20))
_keys = st.sampled_from(["model", "seed", "data", "method", "pipeline", "training", "targets",
                         "profile", "gates", "output", "task", "name", "sparsity", "train", "options",
                         "batch_sizes", "runs", "epochs", "num_processes", "x"]) | st.text(max_size=8)
_values = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                       | st.dictionaries(_keys, inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_keys, _values, max_size=6))
def test_fuzz_recipe_values_accept_or_config_error(data):
    try:
        values = recipe_values(data, "fuzz")
    except ConfigError as exc:
        assert "\n" not in str(exc)
        return
    RunConfig(**values)  # whatever is accepted builds a config
    try:
        check_config(RunConfig(**values))
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_fuzz_recipe_text_accept_or_config_error(text):
    try:
        values = parse_recipe(text, "fuzz")
    except ConfigError as exc:
        assert "\n" not in str(exc) and "recipe fuzz" in str(exc)  # one line naming the recipe
        return
    assert isinstance(values, dict) and set(values) <= {f.name for f in dataclasses.fields(RunConfig)}
    RunConfig(**values)  # whatever is accepted builds a config
