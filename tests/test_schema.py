"""The versioned report schema: it ships with the package, is a valid JSON Schema, matches the
report version, accepts a REAL tiny run's report.json and rejects broken ones."""

from __future__ import annotations

import copy
import re
import json
import tomllib
from pathlib import Path

import pytest

jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the [test] extra")

import compressor  # noqa: E402
from compressor.errors import ArtifactError  # noqa: E402
from compressor.report import SCHEMA_VERSION  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_report(tmp_path_factory):
    """report.json of a real tiny run through the Python API (with gates, so they are checked too)."""
    from tests.conftest import write_tiny_run_inputs
    root = tmp_path_factory.mktemp("schema")
    write_tiny_run_inputs(root, n_train=48, n_eval=24, model_name="model")
    compressor.compress(root / "model", train_file=root / "train.tsv", eval_file=root / "eval.tsv",
                        sparsity=0.5, epochs=1, runs=2, batch_sizes=(1,), seq_lens=(16,),
                        output=root / "run", gates={"min_retention": 0.5, "max_latency_ms": 1e4},
                        progress=False)
    return json.loads((root / "run" / "report.json").read_text())


def test_schema_ships_with_the_package_and_is_valid():
    schema = compressor.report_schema()
    jsonschema.validators.validator_for(schema).check_schema(schema)
    assert schema["x-schema-version"] == SCHEMA_VERSION == schema["properties"]["schema_version"]["const"]
    assert (ROOT / "compressor" / "schema" / "report.schema.json").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "schema/*.json" in package_data["compressor"]


def test_real_report_validates(real_report):
    compressor.validate_report(real_report)
    assert real_report["schema_version"] == SCHEMA_VERSION
    assert [g["name"] for g in real_report["gates"]] == ["min_retention", "max_latency_ms"]
    assert all(g["passed"] for g in real_report["gates"])


def test_real_report_carries_its_intervals(real_report):
    """Wilson intervals per row, the paired differences of the compressed row, the speed interval
    of each real-text shape and the three-way verdict: small summaries, no per-example arrays."""
    models = real_report["models"]
    for label, m in models.items():
        low, high = m["accuracy_interval"]
        assert low <= m["accuracy_onnx"] <= high, label
    paired = models["compressed"]["versus_paired"]
    assert set(paired) == {"dense-int8", "dense"}
    for ref, d in paired.items():
        acc = 100 * (models["compressed"]["accuracy_onnx"] - models[ref]["accuracy_onnx"])
        assert d["points"] == pytest.approx(acc) and d["low"] <= d["points"] <= d["high"]
        assert d["n"] == real_report["data"]["eval_size"] and d["compressed_only"] >= 0
    b1 = next(p for p in real_report["profiles"] if p["model"] == "compressed" and p["batch"] == 1
              and p["shape_kind"] == "real")
    assert b1["speedup_interval"]["dense-int8"]["n"] == 64
    versus = real_report["summary"]["versus_dense_int8"]
    assert versus["verdict_kind"] in ("dominates", "does not dominate", "cannot tell")
    assert versus["dominates"] == (versus["verdict_kind"] == "dominates")
    assert not any(isinstance(v, list) and len(v) > 2 for m in models.values() for v in m.values()
                   if not isinstance(v, dict))


def test_additional_keys_are_allowed(real_report):
    report = copy.deepcopy(real_report)
    report["new_section"] = {"anything": [1, 2]}
    report["models"]["compressed"]["accuracy_by_target"] = {"cuda": 0.5}
    report["profiles"][0]["device_memory_mb"] = 12.5
    report["summary"]["speedup_by_something"] = {}
    compressor.validate_report(report)  # extra keys at every level pass
    report["run"].pop("method")  # the same report without a required key fails
    with pytest.raises(ArtifactError, match=re.escape("at run: 'method' is a required property")):
        compressor.validate_report(report)


@pytest.mark.parametrize("mutate, where", [
    (lambda r: r.pop("models"), "(top level)"),
    (lambda r: r.update(schema_version=2), "schema_version"),
    (lambda r: r["models"].pop("dense"), "models"),
    (lambda r: r["models"]["compressed"].update(accuracy_onnx=1.5), "models/compressed/accuracy_onnx"),
    (lambda r: r["models"]["compressed"].update(size_bytes="4 MB"), "models/compressed/size_bytes"),
    (lambda r: r["profiles"][0].pop("p50_ms"), "profiles/0"),
    (lambda r: r["profiles"][0].update(batch=0), "profiles/0/batch"),
    (lambda r: r["steps"][0].update(modified="yes"), "steps/0/modified"),
    (lambda r: r["summary"].pop("speedup"), "summary"),
    (lambda r: r["gates"][0].update(passed=None), "gates/0/passed"),
    (lambda r: r["gates"][0].update(name="min_accuracy"), "gates/0/name"),
    (lambda r: r["run"].update(sparsity=1.0), "run/sparsity"),
    (lambda r: r.update(created="yesterday"), "created"),
    (lambda r: r["models"]["compressed"].update(accuracy_interval=[0.5]), "models/compressed/accuracy_interval"),
    (lambda r: r["models"]["compressed"]["versus_paired"]["dense"].pop("low"),
     "models/compressed/versus_paired/dense"),
    (lambda r: r["summary"]["versus_dense_int8"].update(verdict_kind="maybe"), "summary/versus_dense_int8"),
])
def test_broken_reports_are_rejected_with_the_place(real_report, mutate, where):
    report = copy.deepcopy(real_report)
    mutate(report)
    with pytest.raises(ArtifactError, match=re.escape(f"at {where}:")):
        compressor.validate_report(report)


def test_report_object_round_trip_matches_the_file(real_report, tmp_path):
    (tmp_path / "report.json").write_text(json.dumps(real_report))
    rep = compressor.Report.load(tmp_path)
    assert rep.to_dict() == real_report and rep.schema_version == SCHEMA_VERSION
    rep.validate()
