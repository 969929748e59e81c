"""The Python API: a light `import compressor`, docstrings on every public name, Report on
recorded numbers, pipelines from user pass objects, and examples/custom_pass.py (a user pass in
the user's own file, registered without touching the package) running in a real tiny pipeline."""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import compressor
from compressor import registry
from compressor.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_import_compressor_stays_light():
    code = ("import sys, compressor\n"
            "names = [compressor.compress, compressor.Report, compressor.profile,\n"
            "         compressor.report_schema, compressor.GatesFailed, compressor.check_gates]\n"
            "heavy = ['torch', 'onnx', 'onnxruntime', 'transformers', 'mlflow', 'jsonschema']\n"
            "print([m for m in heavy if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_every_public_name_is_documented():
    for name in compressor.__all__:
        if name == "__version__":
            continue
        obj = getattr(compressor, name)
        assert inspect.getdoc(obj), name
    for name, member in vars(compressor.Report).items():
        if not name.startswith("_"):
            assert inspect.getdoc(member), f"Report.{name}"
    assert "gates" in inspect.signature(compressor.compress).parameters


def test_compress_rejects_unknown_options_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="unknown compress\\(\\) option 'max_trian'"):
        compressor.compress("minilm", output=tmp_path / "o", max_trian=10)
    with pytest.raises(ConfigError, match="unknown gate 'min_acc'"):
        compressor.compress("minilm", output=tmp_path / "o", gates={"min_acc": 0.9})
    assert not (tmp_path / "o").exists()


@pytest.fixture
def clean_registry(monkeypatch):
    monkeypatch.setattr(registry, "PASSES", dict(registry.PASSES))


def test_pipeline_of_user_pass_objects_is_registered(clean_registry):
    from compressor import Pass, PassResult, option
    from compressor.api import pipeline_spec

    @dataclass(frozen=True)
    class Halve(Pass):
        """Test pass."""
        name: ClassVar[str] = "halve-test"
        factor: float = option(0.5, "factor")

        def run(self, artifact, ctx):
            return PassResult(artifact, False)

    export = registry.get_pass("export")
    spec = pipeline_spec(compressor.Pipeline([Halve(factor=0.25), export()]))
    assert spec == "halve-test{factor=0.25},export"
    assert registry.PASSES["halve-test"] is Halve
    assert compressor.Pipeline(spec).passes[0] == Halve(factor=0.25)

    @dataclass(frozen=True)
    class Impostor(Pass):
        """Another class under a taken name."""
        name: ClassVar[str] = "export"

    with pytest.raises(ConfigError, match="pass name 'export' of Impostor is already registered"):
        pipeline_spec([Impostor()])


RECORDED = {
    "schema_version": 1, "run": {"model": "minilm", "method": "magnitude", "targets": ["cpu"]},
    "models": {"dense": {"accuracy_onnx": 0.8, "size_bytes": 90_000_000, "onnx_path": "d/model.onnx"},
               "compressed": {"accuracy_onnx": 0.76, "size_bytes": 30_000_000, "sparsity": 0.9,
                              "onnx_path": "c/model.onnx"}},
    "profiles": [{"model": m, "target": "cpu", "batch": 1, "seq_len": s, "p50_ms": p, "p90_ms": p + 1}
                 for m, s, p in (("dense", 32, 8.0), ("compressed", 32, 2.0),
                                 ("dense", 128, 30.0), ("compressed", 128, 6.0))],
    "summary": {"accuracy_retention": 0.95, "size_ratio": 3.0, "speedup": {"cpu": {"b1xs128": 5.0}}},
}


def test_report_attributes_and_gates_on_recorded_numbers(tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(RECORDED))
    rep = compressor.Report.load(tmp_path)
    assert rep.folder == tmp_path and rep["run"]["model"] == "minilm"
    assert (rep.accuracy, rep.dense_accuracy, rep.retention) == (0.76, 0.8, 0.95)
    assert rep.size_mb == 30.0 and rep.size_ratio == 3.0 and rep.sparsity == 0.9
    assert rep.speedup == {"cpu": {"b1xs128": 5.0}} and rep.onnx_path == Path("c/model.onnx")
    assert rep.latency_ms() == 6.0  # longest profiled sequence
    assert rep.latency_ms("cpu", 1, 32, model="dense", stat="p90") == 9.0
    assert rep.latency_ms("cuda") is None
    assert rep.gates == [] and rep.passed  # no gate set
    rep.raise_for_gates()
    results = rep.check_gates({"min_retention": 0.9}, max_latency_ms=5)
    assert [(r["name"], r["passed"]) for r in results] == [("min_retention", True), ("max_latency_ms", False)]
    assert rep.gates == []  # checking does not change the report
    failing = compressor.Report({**RECORDED, "gates": results})
    assert not failing.passed and "FAILED" in repr(failing)
    with pytest.raises(compressor.GatesFailed) as info:
        failing.raise_for_gates()
    assert info.value.exit_code == 3
    copy_ = rep.to_dict()
    copy_["models"]["compressed"]["accuracy_onnx"] = 0.0
    assert rep.accuracy == 0.76


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    from tests.conftest import write_tiny_run_inputs
    root = tmp_path_factory.mktemp("api")
    write_tiny_run_inputs(root, n_train=48, n_eval=24, model_name="model")
    return root


@pytest.fixture(scope="module")
def custom_pass_run(tiny_inputs):
    """examples/custom_pass.py imported as a user module and run on the tiny model."""
    mp = pytest.MonkeyPatch()
    mp.setattr(registry, "PASSES", dict(registry.PASSES))  # the example registers its pass
    try:
        spec = importlib.util.spec_from_file_location("user_custom_pass", ROOT / "examples" / "custom_pass.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert registry.PASSES["drop-layers"] is module.DropLayers
        report = module.main(["--model", str(tiny_inputs / "model"), "--train", str(tiny_inputs / "train.tsv"),
                              "--eval", str(tiny_inputs / "eval.tsv"), "--keep", "1",
                              "--output", str(tiny_inputs / "custom"), "--runs", "2",
                              "--batch-sizes", "1", "--seq-len", "16"])
    finally:
        mp.undo()
    return report, module


def test_custom_pass_from_a_user_file_runs_in_a_pipeline(custom_pass_run):
    report, module = custom_pass_run
    assert [s["name"] for s in report.steps] == ["finetune", "drop-layers", "magnitude", "export"]
    drop = report.steps[1]
    assert drop["modified"] and drop["metrics"] == {"layers_before": 2, "layers_after": 1}
    assert report.run["pipeline"].startswith("finetune{epochs=1},drop-layers{keep=1},magnitude")
    dense, comp = report["models"]["dense"]["params"], report["models"]["compressed"]["params"]
    assert comp["encoder"] == pytest.approx(dense["encoder"] / 2)  # one of two layers kept
    assert report.size_bytes < report["models"]["dense"]["size_bytes"]
    assert abs(report.sparsity - 0.5) < 0.01
    import onnx
    graph = onnx.load(str(report.onnx_path), load_external_data=False).graph
    assert sum(n.op_type == "Softmax" for n in graph.node) == 1  # one attention block left
    assert (report.folder / "report.md").is_file()
    with pytest.raises(ConfigError, match="keep=0 is out of range"):
        module.DropLayers(keep=0)


def test_profile_api(custom_pass_run):
    report, _ = custom_pass_run
    dense = report["models"]["dense"]["onnx_path"]
    profiles = compressor.profile(report.onnx_path.parent, baseline=dense, batch_sizes=(1, 2),
                                  seq_lens=(8,), runs=2, threads=1)
    assert {(p.model, p.batch, p.seq_len) for p in profiles} == \
        {("baseline", 1, 8), ("model", 1, 8), ("baseline", 2, 8), ("model", 2, 8)}
    assert all(p.p50_ms > 0 and p.providers_used[0] == "CPUExecutionProvider" for p in profiles)
    with pytest.raises(ConfigError, match="unknown option 'thread' for target 'cpu'"):
        compressor.profile(report.onnx_path, thread=1)


def test_examples_use_only_the_public_surface():
    allowed = {"compressor", "compressor.errors"}
    for path in sorted((ROOT / "examples").glob("*.py")):
        text = path.read_text()
        compile(text, str(path), "exec")
        imports = {line.split()[1] for line in text.splitlines()
                   if line.startswith(("import compressor", "from compressor"))}
        assert imports <= allowed, (path.name, imports)
        assert text.lstrip().startswith('"""'), path.name  # a docstring says how to run it
