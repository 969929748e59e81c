"""Bad input, one table: every case prints one line naming the value and what is allowed, exits
with code 2, shows no traceback and leaves nothing written. Very long texts work (truncated).
Safe loading: no pickles, no remote code without --trust-remote-code. The spec parser is fuzzed."""

from __future__ import annotations

import errno
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compressor.cli import main
from compressor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny model folder, good train/eval files and broken variants, ONNX files, a recipe."""
    import onnx
    from onnx import TensorProto, helper
    from tests.conftest import make_toy_task, write_tiny_run_inputs
    root = tmp_path_factory.mktemp("bad-inputs")
    write_tiny_run_inputs(root, n_train=16, n_eval=8)  # tiny/, train.tsv, eval.tsv
    rows = "".join(f"{r.text}\t{r.label}\n" for r in make_toy_task(n_train=16, n_eval=8).train)
    files = {
        "empty.tsv": "",
        "nolabel.tsv": "sentence\tscore\n" + rows,
        "labels5.tsv": "sentence\tlabel\n" + rows + "a b c\t5\n",
        "eval9.tsv": "sentence\tlabel\nsome text\t9\n",
        "recipe-unknown.yaml": "model: minilm\nmethod: {name: magnitude, sparsty: 0.9}\n",
        "recipe-bad.yaml": "model: minilm\ndata: {task: [unclosed\n",
        "afile": "not a folder",
    }
    for name, text in files.items():
        (root / name).write_text(text)
    (root / "noconfig").mkdir()
    (root / "gpt2").mkdir()
    (root / "gpt2" / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (root / "garbage.onnx").write_bytes(b"\x00not an onnx model" * 10)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    add = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "not-bert", [x], [y])
    onnx.save(helper.make_model(add, opset_imports=[helper.make_opsetid("", 17)]), str(root / "relu.onnx"))
    broken = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["y"])], "broken", [x], [y])
    onnx.save(helper.make_model(broken, opset_imports=[helper.make_opsetid("", 17)]), str(root / "broken.onnx"))
    return root


def _disk_full(monkeypatch, root):
    from compressor import artifact

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(artifact.os, "fsync", fsync)


def _no_permission(monkeypatch, root):
    import os
    real = os.access
    monkeypatch.setattr(os, "access", lambda path, mode: False if mode & os.W_OK else real(path, mode))


def _one_rank_of_two(monkeypatch, root):
    monkeypatch.setenv("WORLD_SIZE", "2")


def _earlier_run(monkeypatch, root):
    from compressor.recipe import write_recipe
    from compressor.config import RunConfig
    write_recipe(root / "out", RunConfig(model=str(root / "tiny"), sparsity=0.9, output=str(root / "out")))


FILES = ["--train", "{root}/train.tsv", "--eval", "{root}/eval.tsv"]
TINY = ["run", "{root}/tiny", *FILES]
# (id, argv, fragment of the one error line, setup or None). "{root}" is the inputs folder.
BAD = [
    ("sparsity 1.0", ["run", "minilm", "--sparsity", "1.0"], "sparsity=1.0 is out of range: allowed [0.0, 1.0)", None),
    ("sparsity -0.1", ["run", "minilm", "--sparsity", "-0.1"], "sparsity=-0.1 is out of range", None),
    ("sparsity abc", ["run", "minilm", "--sparsity", "abc"], "'abc' is not a valid float", None),
    ("unknown method", ["run", "minilm", "--method", "foo"], "method='foo' is not allowed: choose one of cap,", None),
    ("vocab texts missing", ["run", "minilm", "--vocab-prune", "--vocab-texts", "{root}/no-such.txt"],
     "vocab_texts='", None),
    ("vocab texts without vocab prune", ["run", "minilm", "--vocab-texts", "{root}/afile"], "needs --vocab-prune", None),
    ("max positions below max length", ["run", "minilm", "--max-positions", "32"],
     "max_positions=32 is out of range: allowed [64, 4096]", None),
    ("speedup out of range", ["run", "minilm", "--speedup", "0.5"], "speedup=0.5 is out of range", None),
    ("dev size negative", ["run", "minilm", "--dev-size", "-1"], "dev_size=-1.0 is out of range", None),
    ("columns with a named task", ["run", "minilm", "--columns", "text=0,label=1"],
     "--columns 'text=0,label=1' applies to --train/--eval files only", None),
    ("unknown target", ["run", "minilm", "--target", "tpu"], "target='tpu' is not allowed: choose one of cpu", None),
    ("unavailable target", ["run", "minilm", "--target", "cuda"],
     "target 'cuda' needs onnxruntime-gpu with CUDAExecutionProvider; available here: ", None),
    ("batch size 0", ["run", "minilm", "--batch-sizes", "0"], "each value must be an integer >= 1", None),
    ("unknown pass", ["run", "minilm", "--pipeline", "magnitude{sparsity=0.9},nope"],
     "unknown pass 'nope': available cap,", None),
    ("unknown pass option", ["run", "minilm", "--pipeline", "magnitude{size=3},export"],
     "unknown option 'size' for pass 'magnitude': allowed batch_size,", None),
    ("bad option value", ["run", "minilm", "--pipeline", "magnitude{epochs=two},export"],
     "option magnitude.epochs='two' is not a valid int", None),
    ("wrong pass order", ["run", "minilm", "--pipeline", "export,magnitude"], "cannot run after 'export'", None),
    ("no export", ["run", "minilm", "--pipeline", "magnitude"], "must end with an ONNX model: add 'export'", None),
    ("spec trailing comma", ["run", "minilm", "--pipeline", "magnitude,export,"], "ends with a comma", None),
    ("train without eval", ["run", "minilm", "--train", "x.tsv"], "--train and --eval go together", None),
    ("max length 4", ["run", "minilm", "--max-length", "4"], "max_length=4 is out of range: allowed [8, 512]", None),
    ("processes 0", ["run", "minilm", "--num-processes", "0"], "num_processes=0 is out of range: allowed [1, 1024]", None),
    ("checkpoint -1", ["run", "minilm", "--checkpoint-every", "-1"], "checkpoint_every=-1 is out of range", None),
    ("method option set by flag", ["run", "minilm", "--method-option", "sparsity=0.5"],
     "method option 'sparsity' is set with --sparsity", None),
    ("unknown method option", ["run", "minilm", "--method-option", "bogus=1"],
     "unknown option 'bogus' for pass 'magnitude': allowed", None),
    ("method option not k=v", ["run", "minilm", "--method-option", "oneshot"], "must be KEY=VALUE", None),
    ("no model", ["run"], "missing MODEL: give a model", None),
    ("unknown model", [*TINY[:1], "no-such-org/no-such-model", *FILES],
     "cannot load 'no-such-org/no-such-model' from the Hugging Face hub (offline or not found)", None),
    ("bad alias", [*TINY[:1], "minilm-l12", *FILES], "or an alias: bert-base, minilm", None),
    ("model folder missing", ["run", "./no/such/model"], "model folder './no/such/model' does not exist", None),
    ("model without config", [*TINY[:1], "{root}/noconfig", *FILES], "has no config.json", None),
    ("non-BERT model", [*TINY[:1], "{root}/gpt2", *FILES], "unsupported architecture 'gpt2'", None),
    ("unknown task", ["run", "minilm", "--task", "no-such-task"], "unknown task 'no-such-task': available", None),
    ("missing data files", ["run", "minilm", "--train", "missing.tsv", "--eval", "missing2.tsv"],
     "data file 'missing.tsv' not found", None),
    ("empty data file", ["run", "minilm", "--train", "{root}/empty.tsv", "--eval", "{root}/eval.tsv"],
     "empty.tsv' is empty: expected a header row and examples", None),
    ("missing label column", ["run", "minilm", "--train", "{root}/nolabel.tsv", "--eval", "{root}/eval.tsv"],
     "has no label column: expected one of label,", None),
    ("labels out of range", ["run", "minilm", "--train", "{root}/labels5.tsv", "--eval", "{root}/eval.tsv"],
     "label 5 in", None),
    ("eval label unseen", ["run", "minilm", "--train", "{root}/train.tsv", "--eval", "{root}/eval9.tsv"],
     "label '9' in", None),
    ("output is a file", [*TINY, "-o", "{root}/afile"], "output '", None),
    ("output under a file", [*TINY, "-o", "{root}/afile/out"], "is not writable", None),
    ("output not permitted", [*TINY], "is not writable", _no_permission),
    ("disk full", [*TINY], "No space left on device (free space or choose another --output folder)", _disk_full),
    ("recipe unknown key", ["run", "--recipe", "{root}/recipe-unknown.yaml"],
     "unknown key 'method.sparsty': allowed granularity, hidden_width, max_drop, name, options, recover, recover_steps, sparsity",
     None),
    ("recipe not yaml", ["run", "--recipe", "{root}/recipe-bad.yaml"], "is not valid YAML at line", None),
    ("recipe missing", ["run", "--recipe", "{root}/nope.yaml"], "recipe '", None),
    ("resume nothing", ["run", "minilm", "--resume"], "has no recipe.yaml of an earlier run", None),
    ("resume other settings", [*TINY, "--sparsity", "0.5", "--resume"],
     "settings differ from the run in", _earlier_run),
    ("forking inside a launcher", ["run", "minilm", "--num-processes", "2"], "drop --num-processes",
     _one_rank_of_two),
    ("profile missing onnx", ["profile", "does-not-exist.onnx"], "does-not-exist.onnx does not exist", None),
    ("corrupt onnx", ["profile", "{root}/garbage.onnx"], "is not a readable ONNX model", None),
    ("onnx fails checker", ["profile", "{root}/broken.onnx"], "fails the ONNX checker", None),
    ("non-BERT onnx", ["profile", "{root}/relu.onnx"], "is not a BERT-style sequence-classification ONNX", None),
    ("report of nothing", ["report", "no-such-run"], "no-such-run", None),
]


def _files(folder: Path) -> set:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_input_one_line_exit_2_nothing_written(case, inputs, tmp_path, capsys, monkeypatch):
    _, argv, fragment, setup = case
    monkeypatch.chdir(tmp_path)
    out_dir = inputs / "out" if setup is _earlier_run else tmp_path / "out"
    if setup is not None:
        setup(monkeypatch, inputs)
    argv = [a.replace("{root}", str(inputs)) for a in argv]
    if argv[0] == "run" and "-o" not in argv:
        argv += ["-o", str(out_dir), "-q"]
    before = _files(out_dir) | _files(inputs)
    try:
        code = main(argv)
    finally:
        monkeypatch.undo()
    out, err = capsys.readouterr()
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith(("Usage:", "Try "))]
    assert code == 2, (out, err)
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err
    assert _files(out_dir) | _files(inputs) == before  # nothing written, nothing half-written
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_table_has_at_least_20_cases():
    assert len(BAD) >= 20 and len({c[0] for c in BAD}) == len(BAD)


def test_console_script_prints_exactly_one_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: minilm\nsparsity: 0.9\n")
    proc = subprocess.run([sys.executable, "-m", "compressor.cli", "run", "--recipe", str(recipe)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == (f"error: recipe {recipe}: unknown key 'sparsity': allowed data, export, "
                                   "gates, method, mlflow, model, output, pipeline, profile, seed, targets, "
                                   "teacher, training")
    assert not (tmp_path / "out").exists()


# -- very long texts: truncated, never an error ----------------------------------------------
def test_very_long_texts_are_truncated(tmp_path, tokenizer):
    import numpy as np

    from compressor.artifact import TorchModel
    from compressor.context import RunContext
    from compressor.data import Example, load_files
    from compressor.onnx_utils import encode
    from compressor.evaluation import EncodedDataset
    from compressor.pipeline import Pipeline
    from tests.conftest import make_tiny_model
    long_text = " ".join(["wonderful"] * 30000)  # ~30k tokens, far past any position table
    (tmp_path / "train.tsv").write_text("sentence\tlabel\n" + f"{long_text}\t1\n" + "dull film\t0\n" * 7)
    (tmp_path / "eval.tsv").write_text("sentence\tlabel\n" + f"{long_text}\t1\nboring\t0\n")
    task = load_files(tmp_path / "train.tsv", tmp_path / "eval.tsv")
    assert len(task.train[0].text) > 200_000
    assert max(len(r["input_ids"]) for r in EncodedDataset(tokenizer, task.train, 16).rows) == 16
    feeds = encode(tokenizer, [Example(long_text, 1)], max_length=16)
    assert feeds["input_ids"].shape == (1, 16) and feeds["input_ids"].dtype == np.int64
    ctx = RunContext(workdir=tmp_path / "w", data=task, progress=False)
    res = Pipeline("magnitude{sparsity=0.5,epochs=1,batch_size=4,max_length=16}").run(
        TorchModel(make_tiny_model(), tokenizer), ctx)
    assert res.records[0].metrics["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert res.records[0].metrics["accuracy"] is not None


# -- safe loading -----------------------------------------------------------------------------
SOURCES = [p for d in ("compressor", "passes", "targets") for p in (ROOT / d).rglob("*.py")]


def test_source_loads_weights_safely():
    """torch.load only with weights_only=True; no pickle; trust_remote_code never hard-coded on."""
    problems = []
    for path in SOURCES:
        text = path.read_text()
        for m in re.finditer(r"torch\.load\(", text):
            depth, end = 0, m.end() - 1
            for end in range(m.end() - 1, len(text)):  # the call up to its closing parenthesis
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                if depth == 0:
                    break
            call = text[m.start():end + 1]
            if "weights_only=True" not in call:
                problems.append(f"{path.name}: {call}")
        if re.search(r"\bpickle\.loads?\(|\bjoblib\.load\(", text):
            problems.append(f"{path.name}: pickle")
        if re.search(r"trust_remote_code\s*=\s*True", text):
            problems.append(f"{path.name}: trust_remote_code=True")
    assert not problems


def test_model_code_is_not_run_without_the_flag(tmp_path, capsys):
    folder = tmp_path / "custom"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({
        "model_type": "evilbert", "architectures": ["EvilModel"],
        "auto_map": {"AutoConfig": "configuration_evil.EvilConfig",
                     "AutoModelForSequenceClassification": "modeling_evil.EvilModel"}}))
    (folder / "configuration_evil.py").write_text(
        "import pathlib\npathlib.Path(__file__).with_name('RAN').write_text('x')\n")
    from tests.conftest import make_toy_task, write_tsv
    task = make_toy_task(n_train=8, n_eval=4)
    write_tsv(tmp_path / "train.tsv", task.train)
    write_tsv(tmp_path / "eval.tsv", task.eval)
    code = main(["run", str(folder), "--train", str(tmp_path / "train.tsv"), "--eval",
                 str(tmp_path / "eval.tsv"), "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "unsupported architecture 'evilbert'" in err and "never run" in err
    assert len(err.splitlines()) == 1
    assert not (folder / "RAN").exists() and not (tmp_path / "out").exists()
    # A BERT config that also names its own code loads with the library's class: the code never runs.
    from compressor.models import load_model
    from tests.conftest import make_tiny_model, minilm_dir
    from transformers import AutoTokenizer
    make_tiny_model().save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(minilm_dir())).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(cfg))
    assert type(load_model(str(folder)).model).__name__ == "BertForSequenceClassification"
    assert not (folder / "RAN").exists()


def test_trust_remote_code_flag_reaches_load_model(inputs, tmp_path, monkeypatch):
    seen = []

    class Stop(Exception):
        pass

    def fake_load_model(name, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        raise Stop

    monkeypatch.setattr("compressor.models.load_model", fake_load_model)
    args = ["run", str(inputs / "tiny"), "--train", str(inputs / "train.tsv"), "--eval",
            str(inputs / "eval.tsv"), "-o", str(tmp_path / "o"), "-q"]
    for extra, expected in (([], False), (["--trust-remote-code"], True)):
        with pytest.raises(Stop):
            main(args + extra)
        assert seen[-1] is expected


# -- fuzzing the spec parser ------------------------------------------------------------------
_NAMES = ["magnitude", "export", "finetune", "strip", "sparse-init", "quantize", "nip", "cap", "x"]
_OPTS = ["sparsity", "epochs", "lr", "schedule", "granularity", "verify", "bogus", ""]
_VALUES = ["0.9", "1", "-1", "abc", "true", "cubic", "1e-3", "nan", "", "{", "}", "="]
_item = st.builds(lambda n, opts: n + ("{" + ",".join(f"{k}={v}" for k, v in opts) + "}" if opts is not None else ""),
                  st.sampled_from(_NAMES),
                  st.none() | st.lists(st.tuples(st.sampled_from(_OPTS), st.sampled_from(_VALUES)), max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(_item, min_size=0, max_size=4).map(",".join) | st.text(max_size=60))
def test_fuzz_spec_parser_accepts_or_config_error(spec):
    from compressor.pipeline import Pipeline, parse_spec
    try:
        passes = parse_spec(spec)
    except ConfigError as exc:
        assert "\n" not in str(exc).strip("\n") or "\n" in spec
        return
    assert passes and Pipeline(passes).spec == ",".join(p.to_spec() for p in passes)
    assert [p.to_spec() for p in parse_spec(Pipeline(passes).spec)] == [p.to_spec() for p in passes]


def test_unsupported_family_is_refused_before_the_data_is_read(inputs, tmp_path, capsys, monkeypatch):
    """A model folder of a family no adapter supports fails from its config.json alone: the task
    data is never loaded (such folders used to be refused only after the data was read)."""
    import compressor.data

    folder = tmp_path / "t5"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "t5"}))
    read = []
    monkeypatch.setattr(compressor.data, "load_task", lambda *a, **k: read.append(a) or 1 / 0)
    code = main(["run", str(folder), "--task", "rotten-tomatoes", "-o", str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    from compressor.registry import FAMILIES
    assert code == 2 and "unsupported architecture 't5'" in err
    assert set(err.strip().rpartition("supported ")[2].split(", ")) == set(FAMILIES)  # every family named
    assert read == [] and not (tmp_path / "out").exists()
