"""A readable task training loop on Hugging Face Accelerate, shared by every training pass.

``train`` runs top to bottom: tokenise -> loaders -> AdamW + LR schedule -> ``accelerator.prepare``
-> epochs of (forward, ``loss_fn``, backward, clip, step, ``after_step``) -> evaluate -> keep the
best state. It runs unchanged under ``accelerate launch`` / ``torchrun`` on several processes
(metrics are gathered; the LR schedule is built from the per-process loader length).

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
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch.utils.data import DataLoader, Dataset

from compressor.errors import DataError, ModelError

log = logging.getLogger(__name__)

INPUT_KEYS = ("input_ids", "attention_mask", "token_type_ids")


class EncodedDataset(Dataset):
    """Tokenised examples (text or text pair) truncated to ``max_length``; item ``i`` carries
    ``labels`` and ``idx = i`` (its position in ``examples``)."""

    def __init__(self, tokenizer, examples, max_length: int):
        texts = [e.text for e in examples]
        pairs = [e.text_pair for e in examples]
        if all(p is None for p in pairs):
            enc = tokenizer(texts, truncation=True, max_length=max_length)
        elif all(p is not None for p in pairs):
            enc = tokenizer(texts, pairs, truncation=True, max_length=max_length)
        else:  # mixed single texts and pairs: one at a time
            rows = [tokenizer(t, p, truncation=True, max_length=max_length) for t, p in zip(texts, pairs)]
            enc = {k: [r[k] for r in rows] for k in rows[0].keys()} if rows else {}
        self.keys = [k for k in INPUT_KEYS if k in enc]
        self.rows = [{k: enc[k][i] for k in self.keys} for i in range(len(examples))]
        self.labels = [int(e.label) for e in examples]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return {**self.rows[i], "labels": self.labels[i], "idx": i}


class PadCollator:
    """Dynamic padding: pad every field to the longest sequence in the batch (right side)."""

    def __init__(self, pad_token_id: int | None):
        self.pad = 0 if pad_token_id is None else int(pad_token_id)

    def __call__(self, features: list[dict]) -> dict:
        longest = max(len(f["input_ids"]) for f in features)
        batch = {}
        for key in INPUT_KEYS:
            if key in features[0]:
                fill = self.pad if key == "input_ids" else 0
                batch[key] = torch.tensor([f[key] + [fill] * (longest - len(f[key])) for f in features])
        batch["labels"] = torch.tensor([f["labels"] for f in features])
        batch["idx"] = torch.tensor([f["idx"] for f in features])
        return batch


def make_loader(tokenizer, examples, max_length: int, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> DataLoader:
    """A DataLoader of padded batches with ``labels`` and ``idx`` (seeded order if ``shuffle``)."""
    ds = EncodedDataset(tokenizer, examples, max_length)
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen,
                      collate_fn=PadCollator(tokenizer.pad_token_id))


def model_inputs(batch: dict) -> dict:
    """The model's input tensors of a batch (no ``labels``/``idx``)."""
    return {k: batch[k] for k in INPUT_KEYS if k in batch}


def default_param_groups(model, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on matrices, none on biases and LayerNorm (1-D parameters)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 or name.endswith("bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def require_task(ctx, pass_name: str, model=None):
    """``ctx.data`` or a DataError; with ``model``, also check its label count matches."""
    task = getattr(ctx, "data", None)
    if task is None or not task.train:
        raise DataError(f"pass '{pass_name}' needs training data: give a task (e.g. --task rotten-tomatoes)")
    n = getattr(getattr(model, "config", None), "num_labels", None)
    if n is not None and n != task.num_labels:
        raise ModelError(f"model has num_labels={n} but task '{task.name}' has {task.num_labels} labels")
    return task


@dataclass
class TrainResult:
    """What :func:`train` did: per-epoch records (epoch, loss, accuracy, train_seconds, seconds
    including eval); the best eligible epoch and its accuracy; the last epoch's accuracy;
    ``accuracy`` of the model as returned and ``restored_epoch`` (None: the last epoch's state
    was kept); steps, seconds. Accuracies are None without eval data."""

    epochs: list[dict] = field(default_factory=list)
    best_accuracy: float | None = None
    best_epoch: int | None = None
    final_accuracy: float | None = None
    accuracy: float | None = None
    restored_epoch: int | None = None
    steps: int = 0
    seconds: float = 0.0


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
          forward_kwargs: dict | None = None, eval_batch_size: int = 64) -> TrainResult:
    """Train ``model`` in place on ``task.train``; evaluate accuracy on ``task.eval`` after each
    epoch and restore the best eligible epoch's state at the end. See the module docstring for
    the hooks. The model ends in eval mode on the accelerator's device."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from passes._schedule import lr_lambda

    t_start = time.perf_counter()
    set_seed(ctx.seed)
    accelerator = Accelerator(cpu=ctx.device == "cpu")
    train_loader = make_loader(tokenizer, task.train, max_length, batch_size, shuffle=True, seed=ctx.seed)
    eval_loader = make_loader(tokenizer, task.eval, max_length, eval_batch_size) if task.eval else None
    groups = param_groups(model) if param_groups else default_param_groups(model, weight_decay)
    optimizer = torch.optim.AdamW(groups, lr=lr)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    if eval_loader is not None:
        eval_loader = accelerator.prepare(eval_loader)
    total = len(train_loader) * epochs
    warmup = int(round(warmup_ratio * total))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(lr_schedule, warmup, total))
    forward_kwargs = forward_kwargs or {}
    unwrapped = accelerator.unwrap_model(model)

    result, best_state, step = TrainResult(), None, 0
    bar = tqdm(total=total, desc=desc, leave=False,
               disable=not (ctx.progress and accelerator.is_local_main_process))
    for epoch in range(1, epochs + 1):
        model.train()
        t_epoch, loss_sum, n_batches = time.perf_counter(), torch.zeros((), device=accelerator.device), 0
        for batch in train_loader:
            outputs = model(**model_inputs(batch), labels=batch["labels"], **forward_kwargs)
            loss = loss_fn(model, batch, outputs) if loss_fn is not None else outputs.loss
            accelerator.backward(loss)
            accelerator.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if after_step is not None:
                after_step(step, total)
            loss_sum += loss.detach()
            n_batches += 1
            bar.update(1)
            if step % 10 == 0 or n_batches == len(train_loader):
                bar.set_postfix(epoch=epoch, loss=f"{float(loss_sum) / n_batches:.4f}")
        mean_loss = float(accelerator.reduce(loss_sum / max(1, n_batches), "mean"))
        train_seconds = time.perf_counter() - t_epoch
        acc = _accuracy(accelerator, model, eval_loader) if eval_loader is not None and (
            eval_each_epoch or epoch == epochs) else None
        record = {"epoch": epoch, "loss": mean_loss, "accuracy": acc, "train_seconds": train_seconds,
                  "seconds": time.perf_counter() - t_epoch}
        result.epochs.append(record)
        bar.set_postfix(epoch=epoch, loss=f"{mean_loss:.4f}", acc="-" if acc is None else f"{acc:.4f}")
        log.info("%s epoch %d/%d: loss %.4f, accuracy %s", desc, epoch, epochs, mean_loss, acc)
        eligible = best_eligible is None or best_eligible(epoch)
        if acc is not None and eligible and (result.best_accuracy is None or acc > result.best_accuracy):
            result.best_accuracy, result.best_epoch = acc, epoch
            if keep_best:
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in unwrapped.state_dict().items()}
    bar.close()

    result.final_accuracy = result.epochs[-1]["accuracy"] if result.epochs else None
    result.accuracy = result.final_accuracy
    if best_state is not None and result.best_epoch != epochs:
        unwrapped.load_state_dict(best_state)
        result.accuracy, result.restored_epoch = result.best_accuracy, result.best_epoch
        log.info("%s: restored epoch %d (accuracy %.4f)", desc, result.best_epoch, result.best_accuracy)
    unwrapped.eval()
    accelerator.free_memory()
    result.steps, result.seconds = step, time.perf_counter() - t_start
    return result


def predict_logits(model, tokenizer, examples, max_length: int, batch_size: int = 64) -> torch.Tensor:
    """Logits ``[N, num_labels]`` (CPU, float32) of ``examples`` in order, under no_grad in eval
    mode (the model's train/eval mode is restored afterwards)."""
    loader = make_loader(tokenizer, examples, max_length, batch_size)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for batch in loader:
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            out.append(model(**inputs).logits.float().cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0, 0)


def evaluate(model, tokenizer, examples, max_length: int, batch_size: int = 64) -> float:
    """Accuracy of ``model`` on ``examples`` (0.0 for an empty list)."""
    if not examples:
        return 0.0
    logits = predict_logits(model, tokenizer, examples, max_length, batch_size)
    labels = torch.tensor([int(e.label) for e in examples])
    return float((logits.argmax(-1) == labels).float().mean())
