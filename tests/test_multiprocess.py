"""Data-parallel training: `compress run --num-processes 2` trains on two gloo ranks on CPU and
ends with the same sparsity and metrics as one process (batches are split, not doubled)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compressor.cli import main


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    from tests.conftest import write_tiny_run_inputs
    root = tmp_path_factory.mktemp("inputs")
    write_tiny_run_inputs(root, n_train=72, n_eval=24, seed=4)  # 64 train + 8 dev
    return root


def _run(inputs: Path, out: Path, processes: int) -> dict:
    spec = "magnitude{sparsity=0.6,epochs=2,lr=0.002,batch_size=16,max_length=16,update_every=2},export"
    code = main(["run", str(inputs / "tiny"), "--train", str(inputs / "train.tsv"), "--eval",
                 str(inputs / "eval.tsv"), "--pipeline", spec, "--num-processes", str(processes),
                 "--runs", "1", "--batch-sizes", "1", "--seq-lens", "8", "--no-real-shapes",
                 "--no-sparse-init", "--dev-size", "8", "-o", str(out), "-q"])  # 64 rows: full batches
    assert code == 0
    return json.loads((out / "report.json").read_text())


def test_two_processes_match_one(tiny_inputs, tmp_path):
    from safetensors.torch import load_file
    one, two = _run(tiny_inputs, tmp_path / "one", 1), _run(tiny_inputs, tmp_path / "two", 2)
    m1, m2 = one["steps"][0]["metrics"], two["steps"][0]["metrics"]
    assert [t["world_size"] for t in m1["training"]] == [1]
    assert [t["world_size"] for t in m2["training"]] == [2]  # seen inside the training loop
    assert m2["steps"] == m1["steps"] == 8  # 64 examples / 16 per batch x 2 epochs: not halved
    assert m2["sparsity"] == m1["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert m2["mask_updates"] == m1["mask_updates"]
    assert m2["accuracy_per_epoch"] == pytest.approx(m1["accuracy_per_epoch"], abs=1e-9)
    assert two["models"]["compressed"]["accuracy_onnx"] == pytest.approx(one["models"]["compressed"]["accuracy_onnx"])
    w1 = load_file(str(tmp_path / "one" / "01-magnitude" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "two" / "01-magnitude" / "model" / "model.safetensors"))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5  # gradients all-reduced
    assert all(bool(((w1[k] == 0) == (w2[k] == 0)).all()) for k in w1 if "encoder" in k)  # same masks


def test_batch_size_must_split_evenly(tmp_path, tokenizer):
    from compressor.context import RunContext
    from compressor.errors import ConfigError
    from passes._train import train
    from tests.conftest import make_tiny_model, make_toy_task
    ctx = RunContext(workdir=tmp_path, progress=False, num_processes=2)
    with pytest.raises(ConfigError, match="batch_size=7 is not a multiple of the 2 processes"):
        train(make_tiny_model(), tokenizer, make_toy_task(8, 4), ctx, epochs=1, lr=1e-3, batch_size=7)


def _torchrun(inputs: Path, out: Path, spec: str, tmp: Path, *extra: str):
    """`torchrun --nproc-per-node 2 -m compressor.cli run ...` on two CPU ranks (gloo)."""
    import os
    import subprocess
    import sys
    tmp.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TMPDIR=str(tmp), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo",
               ACCELERATE_USE_CPU="true", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "compressor.cli", "run", str(inputs / "tiny"), "--train", str(inputs / "train.tsv"),
           "--eval", str(inputs / "eval.tsv"), "--pipeline", spec, "--runs", "1", "--batch-sizes", "1",
           "--seq-lens", "8", "--no-real-shapes", "--no-sparse-init", "--dev-size", "8", "-o", str(out),
           "-q", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_compress_run_as_two_torchrun_ranks(tiny_inputs, tmp_path):
    """Under torchrun every rank runs `compress run`: rank 0 writes the run, rank 1 trains beside it
    in a scratch folder; the result equals the forked two-process run's and the one-process run's."""
    from safetensors.torch import load_file
    spec = "magnitude{sparsity=0.6,epochs=2,lr=0.002,batch_size=16,max_length=16,update_every=2},export"
    proc = _torchrun(tiny_inputs, tmp_path / "ranks", spec, tmp_path / "tmp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("report written to") == 1  # rank 0 alone reports
    ranks = json.loads((tmp_path / "ranks" / "report.json").read_text())
    one = _run(tiny_inputs, tmp_path / "one", 1)
    m1, m2 = one["steps"][0]["metrics"], ranks["steps"][0]["metrics"]
    assert [t["world_size"] for t in m2["training"]] == [2]
    assert m2["steps"] == m1["steps"] == 8
    assert m2["accuracy_per_epoch"] == pytest.approx(m1["accuracy_per_epoch"], abs=1e-9)
    w1 = load_file(str(tmp_path / "one" / "01-magnitude" / "model" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "ranks" / "01-magnitude" / "model" / "model.safetensors"))
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5
    assert not list((tmp_path / "tmp").glob("compressor-rank*"))  # rank 1's scratch folder is gone


def test_torchrun_ranks_follow_rank_0_through_a_structure_decision(tiny_inputs, tmp_path):
    """finetune makes the teacher, fisher decides the structure, strip removes it, distill trains the
    stripped model from the teacher on both ranks: rank 1 continues from rank 0's saved steps (same shapes, so the ranks can train together),
    and --resume skips on every rank the steps rank 0 finished."""
    spec = ("finetune{epochs=2,lr=0.002,batch_size=16,max_length=16},fisher{flops=0.5,samples=32,batch_size=16},"
            "strip,distill{epochs=1,min_steps=0,batch_size=16,max_length=16},export")
    out = tmp_path / "ranks"
    proc = _torchrun(tiny_inputs, out, spec, tmp_path / "tmp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in doc["steps"]] == ["finetune", "fisher", "strip", "distill", "export"]
    assert [t["world_size"] for t in doc["steps"][3]["metrics"]["training"]] == [2]  # the teacher came along
    again = _torchrun(tiny_inputs, out, spec, tmp_path / "tmp", "--resume")
    assert again.returncode == 0, again.stderr[-3000:]
    doc2 = json.loads((out / "report.json").read_text())
    assert doc2["steps"][3]["metrics"] == doc["steps"][3]["metrics"]  # not trained again
    assert doc2["models"]["compressed"]["accuracy_onnx"] == doc["models"]["compressed"]["accuracy_onnx"]
