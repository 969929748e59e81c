"""Resume and atomic writes: a run killed with SIGKILL mid-training and resumed ends where an
uninterrupted run ends; checkpoints restore training exactly; no writer leaves a half file under
its final name."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from compressor.cli import main

ROOT = Path(__file__).resolve().parents[1]


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """A saved tiny BERT folder and toy train (96 rows: 3 batches of 32) / eval files."""
    from tests.conftest import write_tiny_run_inputs
    root = tmp_path_factory.mktemp("inputs")
    write_tiny_run_inputs(root, n_train=96, n_eval=16, seed=1)
    return root


def _args(inputs: Path, out: Path) -> list[str]:
    # finetune (3 steps) then magnitude (6 steps, lr high enough that the weights move).
    spec = ("finetune{epochs=1,max_length=16},magnitude{sparsity=0.5,epochs=2,lr=0.002,"
            "max_length=16,update_every=2},export")
    return ["run", str(inputs / "tiny"), "--train", str(inputs / "train.tsv"), "--eval",
            str(inputs / "eval.tsv"), "--pipeline", spec, "--runs", "1", "--batch-sizes", "1",
            "--seq-lens", "8", "--no-real-shapes", "--max-length", "16", "--checkpoint-every", "2",
            "-o", str(out), "-q"]


def _weights(folder: Path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(folder / "model.safetensors"))


# -- resume after SIGKILL ----------------------------------------------------------------------
def test_sigkilled_run_resumes_to_the_same_result(tiny_inputs, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    assert main(_args(tiny_inputs, ref)) == 0

    # Killed right after optimizer step 5 of magnitude: the last checkpoint is step 4 (mid
    # epoch 2), so the resume skips a batch, replays step 5 and the RNG streams must line up.
    env = {**os.environ, "COMPRESSOR_KILL_AFTER_STEP": "magnitude:5", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "compressor.cli", *_args(tiny_inputs, killed)],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert (killed / "01-finetune" / "step.json").is_file()  # finished before the kill
    assert not (killed / "02-magnitude" / "step.json").exists()
    meta = json.loads((killed / "02-magnitude" / "checkpoints" / "train-1" / "meta.json").read_text())
    assert meta["position"] == {"step": 4, "epoch": 2, "batch": 1} and not meta["finished"]
    assert not (killed / "report.json").exists()

    finetuned = killed / "01-finetune" / "model" / "model.safetensors"
    stamp = finetuned.stat().st_mtime_ns
    assert main(["run", "--resume", "-o", str(killed), "-q"]) == 0  # settings from recipe.yaml
    assert finetuned.stat().st_mtime_ns == stamp  # the finished step was skipped, not rerun
    a = json.loads((ref / "report.json").read_text())
    b = json.loads((killed / "report.json").read_text())
    assert [s["name"] for s in b["steps"]] == ["finetune", "magnitude", "export"]
    for sa, sb in zip(a["steps"], b["steps"]):
        for key in ("accuracy", "sparsity", "accuracy_per_epoch", "loss_per_epoch", "mask_updates", "steps"):
            assert sb["metrics"].get(key) == pytest.approx(sa["metrics"].get(key), abs=1e-6), (sa["name"], key)
    mag = b["steps"][1]["metrics"]
    assert mag["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert mag["training"][0]["resumed_from_step"] == 4  # it really continued from the checkpoint
    for label in ("dense", "compressed"):
        assert b["models"][label]["accuracy_onnx"] == pytest.approx(a["models"][label]["accuracy_onnx"])
    wa, wb = _weights(ref / "02-magnitude" / "model"), _weights(killed / "02-magnitude" / "model")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)
    assert worst <= 1e-6
    assert not (killed / "02-magnitude" / "checkpoints").exists()  # removed once the step finished
    assert not list(killed.rglob(".*.tmp-*"))


def test_pipeline_skips_finished_steps_and_reruns_from_the_first_unfinished(tmp_path, tiny_torch_model,
                                                                           monkeypatch):
    import torch

    from compressor.context import RunContext
    from compressor.pipeline import Pipeline
    from passes.magnitude import Magnitude
    from passes.strip import Strip
    spec = "magnitude{sparsity=0.5,schedule=oneshot,epochs=0,granularity=structured},strip"
    first = Pipeline(spec).run(tiny_torch_model, RunContext(workdir=tmp_path, progress=False))
    assert [json.loads((tmp_path / d / "step.json").read_text())["record"]["name"]
            for d in ("01-magnitude", "02-strip")] == ["magnitude", "strip"]
    ran = []
    monkeypatch.setattr(Magnitude, "run", lambda self, a, c: ran.append("magnitude"))
    real_strip = Strip.run
    monkeypatch.setattr(Strip, "run", lambda self, a, c: ran.append("strip") or real_strip(self, a, c))
    second = Pipeline(spec).run(tiny_torch_model, RunContext(workdir=tmp_path, progress=False, resume=True))
    assert ran == []  # both finished: reloaded from their folders
    assert [r.to_dict() for r in second.records] == [r.to_dict() for r in first.records]
    x = torch.randint(100, 1000, (2, 9))
    with torch.no_grad():
        assert torch.allclose(first.artifact.model(x).logits, second.artifact.model(x).logits, atol=1e-6)
    (tmp_path / "02-strip" / "step.json").unlink()  # e.g. killed while saving
    Pipeline(spec).run(tiny_torch_model, RunContext(workdir=tmp_path, progress=False, resume=True))
    assert ran == ["strip"]


def _train_run(workdir: Path, task, tokenizer, *, resume=False, crash_at=None, dropout=0.1):
    """train() on a tiny model with dropout and an RNG-drawing hook; a crash at ``crash_at``."""
    import torch

    from compressor.context import RunContext
    from passes._checkpoint import Resumable
    from passes._train import train
    from tests.conftest import make_tiny_model

    class Crash(Exception):
        pass

    class Hooks(Resumable):
        resumable = ("state",)

        def __init__(self):
            self.state = {"draws": []}

        def after_step(self, step, total):
            self.state["draws"].append(float(torch.rand(())))  # global RNG: must line up after resume
            if step == crash_at:
                raise Crash()

    model = make_tiny_model()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = dropout
    ctx = RunContext(workdir=workdir, seed=3, progress=False, resume=resume, checkpoint_every=3)
    ctx.step_dir = workdir / "01-x"
    hooks = Hooks()
    try:
        res = train(model, tokenizer, task, ctx, epochs=2, lr=1e-3, batch_size=8, after_step=hooks.after_step,
                    desc="t", method_state=hooks)
    except Crash:
        return None
    return model, res, hooks.state


def test_checkpoint_restores_training_exactly(tmp_path, tokenizer):
    from tests.conftest import make_toy_task
    task = make_toy_task(n_train=32, n_eval=8)  # 4 batches per epoch, 8 steps
    model_a, res_a, state_a = _train_run(tmp_path / "a", task, tokenizer)
    assert _train_run(tmp_path / "b", task, tokenizer, crash_at=7) is None
    meta = json.loads((tmp_path / "b" / "01-x" / "checkpoints" / "train-1" / "meta.json").read_text())
    assert meta["position"] == {"step": 6, "epoch": 2, "batch": 2}  # every 3 steps + epoch ends
    model_b, res_b, state_b = _train_run(tmp_path / "b", task, tokenizer, resume=True)
    assert res_b.resumed_from == 6 and res_b.steps == res_a.steps == 8
    assert state_b == state_a  # the method state and the RNG draws after the resume
    assert [e["loss"] for e in res_b.epochs] == [e["loss"] for e in res_a.epochs]
    sa, sb = model_a.state_dict(), model_b.state_dict()
    assert all(bool((sa[k] == sb[k]).all()) for k in sa)
    # A finished call is restored, not retrained.
    model_c, res_c, state_c = _train_run(tmp_path / "b", task, tokenizer, resume=True)
    assert state_c == state_a and all(bool((model_c.state_dict()[k] == sa[k]).all()) for k in sa)


def test_checkpoints_load_weights_only(tmp_path):
    """A checkpoint with a pickled object in it cannot be written, and reading never unpickles."""
    import torch

    from passes import _checkpoint as ck
    with pytest.raises(TypeError, match="state\\['bad'\\]"):
        ck.save(tmp_path / "c", {"bad": object()}, {"fingerprint": {}})
    assert not (tmp_path / "c").exists()
    ck.save(tmp_path / "c", {"w": torch.ones(2), "rng": ck.rng_state()}, {"fingerprint": {"a": 1}})
    assert ck.load(tmp_path / "c", {"a": 2}) is None  # another setup: ignored
    assert torch.equal(ck.load(tmp_path / "c", {"a": 1})["w"], torch.ones(2))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"w": Evil()}, tmp_path / "c" / ck.STATE_FILE)  # a tampered file
    assert ck.load(tmp_path / "c", {"a": 1}) is None
    assert not (tmp_path / "pwned").exists()


# -- atomic writes -----------------------------------------------------------------------------
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def _half_then_fail(path_arg: int = 1):
    """A writer that writes half a file where it was told to, then fails (disk full)."""
    def write(*args, **kwargs):
        Path(args[path_arg]).write_bytes(b"\x00" * 512)
        _enospc()
    return write


def _writers(tmp_path, tokenizer):
    """(name, write(), final path, monkeypatch target that crashes mid-write)."""
    import torch

    from compressor import artifact, report
    from compressor.artifact import TorchModel
    from compressor.config import RunConfig
    from compressor.recipe import write_recipe
    from passes import _checkpoint as ck
    from tests.conftest import make_tiny_model
    out = tmp_path / "w"
    model = TorchModel(make_tiny_model(), tokenizer)
    return [
        ("atomic_write_text", lambda: artifact.atomic_write_text(out / "x.json", "{}" * 1000),
         out / "x.json", (artifact.os, "fsync", _enospc)),
        ("model", lambda: model.save(out / "model"), out / "model",
         (type(model.model), "save_pretrained", lambda self, d, **k: _half_then_fail(0)(Path(d) / "model.safetensors"))),
        ("checkpoint", lambda: ck.save(out / "ckpt", {"w": torch.ones(3)}, {"fingerprint": {}}),
         out / "ckpt", (ck.torch, "save", lambda obj, f: _half_then_fail(0)(f))),
        ("report", lambda: report.write_report(out, {"run": {}}), out / "report.json",
         (artifact.os, "fsync", _enospc)),
        ("recipe", lambda: write_recipe(out, RunConfig(output=str(out))), out / "recipe.yaml",
         (artifact.os, "fsync", _enospc)),
    ]


@pytest.mark.parametrize("which", ["atomic_write_text", "model", "checkpoint", "report", "recipe"])
def test_crash_mid_write_leaves_no_file_under_the_final_name(which, tmp_path, tokenizer, monkeypatch):
    name, write, final, (obj, attr, crash) = next(w for w in _writers(tmp_path, tokenizer) if w[0] == which)
    with monkeypatch.context() as m:
        m.setattr(obj, attr, crash)
        with pytest.raises(OSError):
            write()
    assert not final.exists()
    assert not [p for p in final.parent.rglob("*") if p.is_file()] if final.parent.exists() else True
    write()  # the same writer without the crash: the file appears, complete
    assert final.exists()
    if final.is_dir():
        with monkeypatch.context() as m:  # a crash while replacing keeps the previous version
            m.setattr(obj, attr, crash)
            before = sorted(p.name for p in final.iterdir())
            with pytest.raises(OSError):
                write()
        assert sorted(p.name for p in final.iterdir()) == before
        assert not [p for p in final.parent.iterdir() if ".tmp-" in p.name]


def test_sigkill_inside_atomic_dir_leaves_no_target(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from compressor.artifact import atomic_dir
        with atomic_dir({str(tmp_path / 'folder')!r}) as tmp:
            (tmp / "model.onnx").write_bytes(b"half" * 1000)
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, timeout=60)
    assert proc.returncode == -9
    assert not (tmp_path / "folder").exists()
    leftovers = [p for p in tmp_path.iterdir() if ".folder.tmp-" in p.name]
    assert leftovers  # a hidden temporary folder, which resume's clean_temp removes
    from compressor.workdir import clean_temp
    assert clean_temp(tmp_path) == 1 and not list(tmp_path.iterdir())


def test_clean_temp_completes_a_replacement_killed_between_renames(tmp_path):
    from compressor.workdir import clean_temp
    (tmp_path / ".ckpt.old-123").mkdir()          # the previous version, moved aside
    (tmp_path / ".ckpt.old-123" / "state.pt").write_text("old")
    (tmp_path / ".ckpt.tmp-abc").mkdir()          # the new version, complete, not yet renamed
    (tmp_path / ".ckpt.tmp-abc" / "state.pt").write_text("new")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / ".weights.tmp-x").write_text("half")  # an interrupted file write
    clean_temp(tmp_path)
    assert (tmp_path / "ckpt" / "state.pt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["ckpt", "model", "state.pt"]


def test_written_files_follow_the_umask(tmp_path):
    from compressor.artifact import atomic_dir, atomic_write_text
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "r.json", "{}")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
