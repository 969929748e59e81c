"""A readable task training loop on Hugging Face Accelerate, shared by every training pass.

``train`` runs top to bottom: tokenise -> loaders -> AdamW + LR schedule -> ``accelerator.prepare``
-> epochs of (forward, ``loss_fn``, backward, clip, step, ``after_step``) -> evaluate -> keep the
best state.

Hooks for pruning and distillation methods:

- ``loss_fn(model, batch, outputs) -> loss``: replace/extend the loss (KD, contrastive, L1 on
  scores). ``batch`` holds ``input_ids``, ``attention_mask``, (``token_type_ids``), ``labels``
  and ``idx`` (each example's stable position in ``task.train``), on the accelerator device;
  a teacher must be moved to ``batch["input_ids"].device`` by the caller.
- ``forward_kwargs``: extra model arguments (e.g. ``output_hidden_states=True``).
- ``after_step(step, total_steps)``: after every optimizer step (mask updates, proximal steps;
  the LR of step ``t`` is ``lr * _schedule.LR_SCHEDULES[lr_schedule](t, warmup_steps, total)``,
  with ``warmup_steps = round(warmup_ratio * total)``).
- ``param_groups(model) -> list[dict]``: own optimizer groups (e.g. movement scores at lr 1e-2).
- ``best_eligible(epoch)``: which (1-based) epochs may become the kept best state.
- ``method_state``: the state the hooks keep outside the model (schedule position, snapshots,
  reweighting factors), as a :class:`passes._checkpoint.MethodState`; it is saved in checkpoints
  and restored on resume, and brought back from the worker processes.

Checkpoints (:mod:`passes._checkpoint`): inside a pipeline step, every ``checkpoint_every``
optimizer steps (default ``ctx.checkpoint_every``, 200; 0 = none) and at each epoch end, the
model (masks included), optimizer, scheduler, RNG states, data position and ``method_state`` go
atomically to ``<step dir>/checkpoints/train-<i>``; a finished call leaves its result there. With
``ctx.resume`` a call continues from its checkpoint (same batches, same RNG draws, so the same
numbers as an uninterrupted run), and a finished call returns its saved result without training.
``COMPRESSOR_KILL_AFTER_STEP=<desc>:<step>`` SIGKILLs the process after that step (resume tests).

Processes: with ``num_processes`` (default ``ctx.num_processes``) N > 1 the loop runs in N forked
CPU ranks (:mod:`passes._launch`, gloo) and rank 0's result is loaded back into ``model``; under
``torchrun``/``accelerate launch`` (e.g. ``--multi_gpu`` with ``ctx.device="cuda"``) it runs as
the current rank. Batches are split between the processes (Accelerate ``split_batches``): N
processes take the same optimizer steps on the same batches of ``batch_size`` as one
(``batch_size`` must be a multiple of N), and metrics are gathered over all of them. The result
equals one process's (to float round-off) when the loss is a mean of per-example terms; losses
that depend on the whole batch (padding, in-batch contrast) give close, not equal, results.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch

from compressor.errors import ConfigError, DataError, ModelError
from compressor.evaluation import (INPUT_KEYS, EncodedDataset, PadCollator,  # noqa: F401 (re-exported)
                                   evaluate, make_loader, model_inputs, predict_logits)

log = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 200

def default_param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases and LayerNorm (1-D parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def require_task(ctx, pass_name: str, model=None, max_train: int = 0):
    """``ctx.data`` or a DataError; with ``model``, also check its label count matches; with
    ``max_train``, at most that many training examples (subsampled with ``ctx.seed``)."""
    task = getattr(ctx, "data", None)
    if task is None or not task.train:
        raise DataError(f"pass '{pass_name}' needs training data: give a task (e.g. --task rotten-tomatoes)")
    n = getattr(getattr(model, "config", None), "num_labels", None)
    if n is not None and n != task.num_labels:
        raise ModelError(f"model has num_labels={n} but task '{task.name}' has {task.num_labels} labels")
    return task.subsample(max_train=max_train, seed=ctx.seed) if max_train else task


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch records (epoch, loss, accuracy, train_seconds, seconds
    including eval); the best eligible epoch and its accuracy; the last epoch's accuracy;
    ``accuracy`` of the model as returned and ``restored_epoch`` (None: the last epoch's state
    was kept); steps, seconds; ``world_size`` (processes that trained) and ``resumed_from`` (the
    optimizer step a resumed run continued from; None: trained from the start). Accuracies are
    None without eval data."""

    epochs: list[dict] = field(default_factory=list)
    best_accuracy: float | None = None
    best_epoch: int | None = None
    final_accuracy: float | None = None
    accuracy: float | None = None
    restored_epoch: int | None = None
    steps: int = 0
    seconds: float = 0.0
    world_size: int = 1
    resumed_from: int | None = None


def _accuracy(accelerator, model, loader) -> float:
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in loader:
            preds = model(**model_inputs(batch)).logits.argmax(-1)
            preds, labels = accelerator.gather_for_metrics((preds, batch["labels"]))
            correct += int((preds == labels).sum())
            total += labels.numel()
    return correct / max(1, total)


def train(model, tokenizer, task, ctx, *, epochs: int, lr: float, batch_size: int,
          warmup_ratio: float = 0.1, weight_decay: float = 0.01, max_length: int = 64,
          loss_fn: Callable | None = None, after_step: Callable | None = None,
          eval_each_epoch: bool = True, keep_best: bool = True,
          best_eligible: Callable[[int], bool] | None = None, desc: str = "train",
          lr_schedule: str = "linear", param_groups: Callable | None = None,
          forward_kwargs: dict | None = None, eval_batch_size: int = 64,
          method_state=None, checkpoint_every: int | None = None,
          num_processes: int | None = None) -> TrainResult:
    """Train ``model`` in place on ``task.train``; evaluate accuracy on ``task.eval`` after each
    epoch and restore the best eligible epoch's state at the end. See the module docstring for
    the hooks, checkpoints and processes. The model ends in eval mode on the accelerator's device."""
    from passes import _checkpoint as ck
    from passes._launch import in_distributed_env

    t_start = time.perf_counter()
    o = SimpleNamespace(epochs=epochs, lr=lr, batch_size=batch_size, warmup_ratio=warmup_ratio,
                        weight_decay=weight_decay, max_length=max_length, loss_fn=loss_fn,
                        after_step=after_step, eval_each_epoch=eval_each_epoch, keep_best=keep_best,
                        best_eligible=best_eligible, desc=desc, lr_schedule=lr_schedule,
                        param_groups=param_groups, forward_kwargs=forward_kwargs or {},
                        eval_batch_size=eval_batch_size, method_state=method_state)
    every = checkpoint_every if checkpoint_every is not None else getattr(ctx, "checkpoint_every",
                                                                          DEFAULT_CHECKPOINT_EVERY)
    folder = ck.call_dir(ctx)  # counted on every call, so stage i of a pass keeps its folder
    if every is None or every <= 0:
        folder = None
    fp = {"desc": desc, "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": ctx.seed,
          "max_length": max_length, "lr_schedule": lr_schedule, "train": len(task.train),
          "eval": len(task.eval or [])}
    resume = bool(getattr(ctx, "resume", False)) and folder is not None
    done = ck.load(folder, fp, finished_only=True) if resume else None
    n = int(num_processes or getattr(ctx, "num_processes", 1) or 1)
    if done is not None:
        log.info("%s: already trained (checkpoint %s): restored, not retrained", desc, folder)
        result = _restore(model, done, method_state)
    elif n <= 1 or in_distributed_env():
        result = _loop(model, tokenizer, task, ctx, o, folder, every, fp, resume)
    else:
        result = _launch(model, tokenizer, task, ctx, o, folder, every, fp, resume, n)
        result.seconds = time.perf_counter() - t_start
    _note(ctx, {"desc": desc, "world_size": result.world_size, "steps": result.steps,
                        "resumed_from_step": result.resumed_from, "restored": done is not None})
    return result


def _note(ctx, info: dict) -> None:
    """Tell the step's training hook what this call did (nothing outside a pipeline step)."""
    hook = getattr(ctx, "training", None)
    if hook is not None:
        hook.note(info)


def _launch(model, tokenizer, task, ctx, o, folder, every, fp, resume, n: int) -> TrainResult:
    """Run :func:`_loop` on ``n`` forked processes; load rank 0's finished state into ``model``."""
    from passes import _checkpoint as ck
    from passes._launch import launch

    desc, batch_size = o.desc, o.batch_size
    if getattr(ctx, "device", "cpu") != "cpu":  # forking after CUDA is initialised cannot work
        raise ConfigError(f"num_processes={n} forks CPU worker processes; to train on several GPUs "
                          "run your script under accelerate launch --multi_gpu or torchrun instead")
    if batch_size % n:
        raise ConfigError(f"{desc} batch_size={batch_size} is not a multiple of the {n} processes: "
                          f"each process takes batch_size / {n} examples of every batch")
    with tempfile.TemporaryDirectory(prefix="compressor-train-") as scratch:
        out = folder or Path(scratch)  # rank 0 writes the finished state here
        launch(n, functools.partial(_loop, model, tokenizer, task, ctx, o, out, every if folder else 0,
                                    fp, resume), out)
        state = ck.load(out, fp, finished_only=True)
    if state is None:
        raise RuntimeError(f"{desc}: training on {n} processes ended without a result")
    return _restore(model, state, o.method_state)


def _restore(model, state: dict, method_state) -> TrainResult:
    """Load a finished call's model, method state and RNG states; return its TrainResult."""
    from passes import _checkpoint as ck
    model.load_state_dict(state["model"])
    if method_state is not None and state.get("method") is not None:
        method_state.load_state_dict(state["method"])
    ck.set_rng_state(state["rng"])
    model.eval()
    return TrainResult(**state["result"])


def _kill_if_asked(desc: str, step: int) -> None:
    """Fault injection for resume tests: ``COMPRESSOR_KILL_AFTER_STEP=<desc>:<step>`` SIGKILLs
    this process right after that optimizer step (and its checkpoint, if one was due)."""
    if os.environ.get("COMPRESSOR_KILL_AFTER_STEP") == f"{desc}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def _loop(model, tokenizer, task, ctx, o, folder, every: int, fp: dict, resume: bool) -> TrainResult:
    """The training loop of :func:`train` in this process (one rank of several, or alone)."""
    from accelerate import Accelerator, DataLoaderConfiguration
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from passes import _checkpoint as ck
    from passes._schedule import lr_lambda

    t_start = time.perf_counter()
    set_seed(ctx.seed)
    # split_batches: a batch of batch_size is shared by the processes, so N processes take the
    # same optimizer steps on the same batches as one process (each pads its own share).
    accelerator = Accelerator(cpu=getattr(ctx, "device", "cpu") == "cpu",
                              dataloader_config=DataLoaderConfiguration(split_batches=True))
    n = accelerator.num_processes
    if o.batch_size % n:
        raise ConfigError(f"{o.desc} batch_size={o.batch_size} is not a multiple of the {n} processes")
    train_loader = make_loader(tokenizer, task.train, o.max_length, o.batch_size, shuffle=True, seed=ctx.seed)
    gen = train_loader.generator  # the shuffling order: its state at each epoch start is saved
    eval_bs = max(n, o.eval_batch_size // n * n)
    eval_loader = make_loader(tokenizer, task.eval, o.max_length, eval_bs) if task.eval else None
    groups = o.param_groups(model) if o.param_groups else default_param_groups(model, o.weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=o.lr)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    per_epoch = len(train_loader)
    total = per_epoch * o.epochs
    warmup = int(round(o.warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(o.lr_schedule, warmup, total))
    unwrapped = accelerator.unwrap_model(model)

    result, best_state, step = TrainResult(world_size=n), None, 0
    first_epoch, skip, epoch_gen, pending_rng = 1, 0, None, None
    loss_sum, n_batches = torch.zeros((), device=accelerator.device), 0
    saved = ck.load(folder, fp) if resume else None
    if saved is not None and "optimizer" in saved:  # an unfinished call: continue it
        unwrapped.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        pos = saved["position"]
        step, first_epoch, skip = pos["step"], pos["epoch"], pos["batch"]
        epoch_gen, pending_rng, best_state = saved["epoch_generator"], saved["rng"], saved["best_state"]
        loss_sum, n_batches = saved["loss_sum"].to(accelerator.device), saved["n_batches"]
        result = TrainResult(**{**saved["result"], "world_size": n, "resumed_from": step})
        if o.method_state is not None and saved.get("method") is not None:
            o.method_state.load_state_dict(saved["method"])
        log.info("%s: resuming from step %d of %d (epoch %d, batch %d)", o.desc, step, total,
                 first_epoch, skip)

    def checkpoint(position: dict, epoch_start_gen, finished: bool = False) -> None:
        if accelerator.is_main_process:
            state = {"model": unwrapped.state_dict(), "rng": ck.rng_state(), "result": asdict(result),
                     "method": o.method_state.state_dict() if o.method_state is not None else None}
            if not finished:
                state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                             position=position, epoch_generator=epoch_start_gen, best_state=best_state,
                             loss_sum=loss_sum.detach().cpu(), n_batches=n_batches)
            ck.save(folder, state, {"fingerprint": fp, "position": position, "finished": finished,
                                    "world_size": n, "total_steps": total})
        accelerator.wait_for_everyone()

    bar = tqdm(total=total, initial=step, desc=o.desc, leave=False,
               disable=not (ctx.progress and accelerator.is_local_main_process))
    for epoch in range(first_epoch, o.epochs + 1):
        model.train()
        resuming = epoch == first_epoch and epoch_gen is not None
        if resuming:
            gen.set_state(epoch_gen)
        else:
            loss_sum, n_batches = torch.zeros((), device=accelerator.device), 0
        start_gen, t_epoch = gen.get_state(), time.perf_counter()
        for i, batch in enumerate(train_loader):
            if resuming and i < skip:
                continue  # batches the checkpoint had already trained on
            if pending_rng is not None:  # now the RNG streams are where the checkpoint left them
                ck.set_rng_state(pending_rng)
                pending_rng = None
            outputs = model(**model_inputs(batch), labels=batch["labels"], **o.forward_kwargs)
            loss = o.loss_fn(model, batch, outputs) if o.loss_fn is not None else outputs.loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if o.after_step is not None:
                o.after_step(step, total)
            loss_sum += loss.detach()
            n_batches += 1
            bar.update(1)
            if step % 10 == 0 or i + 1 == per_epoch:
                bar.set_postfix(epoch=epoch, loss=f"{float(loss_sum) / n_batches:.4f}")
            if folder is not None and every and step % every == 0 and i + 1 < per_epoch:
                checkpoint({"step": step, "epoch": epoch, "batch": i + 1}, start_gen)
            _kill_if_asked(o.desc, step)
        mean_loss = float(accelerator.reduce(loss_sum / max(1, n_batches), "mean"))
        train_seconds = time.perf_counter() - t_epoch
        acc = _accuracy(accelerator, model, eval_loader) if eval_loader is not None and (
            o.eval_each_epoch or epoch == o.epochs) else None
        record = {"epoch": epoch, "loss": mean_loss, "accuracy": acc, "train_seconds": train_seconds,
                  "seconds": time.perf_counter() - t_epoch}
        result.epochs.append(record)
        bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}", acc="-" if acc is None else f"{acc:.4f}")
        log.info("%s epoch %d/%d: loss %.4f, accuracy %s", o.desc, epoch, o.epochs, mean_loss, acc)
        eligible = o.best_eligible is None or o.best_eligible(epoch)
        if acc is not None and eligible and (result.best_accuracy is None or acc > result.best_accuracy):
            result.best_accuracy, result.best_epoch = acc, epoch
            if o.keep_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}
        if folder is not None:
            loss_sum, n_batches = torch.zeros((), device=accelerator.device), 0
            checkpoint({"step": step, "epoch": epoch + 1, "batch": 0}, gen.get_state())
    bar.close()
    if pending_rng is not None:  # resumed after the last epoch: nothing left to train
        ck.set_rng_state(pending_rng)

    result.final_accuracy = result.epochs[-1]["accuracy"] if result.epochs else None
    result.accuracy = result.final_accuracy
    if best_state is not None and result.best_epoch != o.epochs:
        unwrapped.load_state_dict(best_state)
        result.accuracy, result.restored_epoch = result.best_accuracy, result.best_epoch
        log.info("%s: restored epoch %d (accuracy %.4f)", o.desc, result.best_epoch, result.best_accuracy)
    unwrapped.eval()
    result.steps, result.seconds = step, time.perf_counter() - t_start
    if folder is not None:
        checkpoint({"step": step, "epoch": o.epochs + 1, "batch": 0}, None, finished=True)
    accelerator.free_memory()
    return result
