"""CAP's losses: Xu et al., "From Dense to Sparse: Contrastive Pruning for Better Pre-trained
Language Model Compression" (AAAI 2022, arXiv:2112.07198).

The paper's own equations were not available; everything here follows the authors' code
(alibaba/AliceMind ``ContrastivePruning``: ``StructuredPruning/model/PruneBert.py``
``calculate_contrastive_loss``), as summarised in METHODS.md section 1.5; the representations and
banks are in :mod:`passes.cap.banks`:

- :func:`contrastive_loss`: the supervised contrastive loss over one bank, with the authors'
  double normalisation (METHODS 1.5).
- KD is :func:`passes._distill.kd_kl`: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.
- :class:`CapObjective`: ``w_ce * CE + w_kd * KD + sum over banks (w_u * L_u + w_s * L_s)``.
  A regression head (one output): CE and KD are MSEs (:func:`passes._distill.task_loss`,
  :func:`passes._distill.kd_kl`) and the supervised term ``L_s`` is left out (its positives are
  examples of the same class; scores have none), so only the unsupervised ``L_u`` contrasts.
  A token classifier (logits ``[B, S, C]``): CE and KD per tagged token, and no ``L_s`` either (a
  sentence has no class).
- :class:`CapLoss`: that objective bound to a student, its banks and the teacher's cached logits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch

from compressor.evaluation import logits_of, model_inputs
from passes._checkpoint import Resumable
from passes._distill import embedding_settings, kd_kl, multi_hot, one_output, task_loss
from passes.cap.banks import MemoryBank, RepCapture, encode, sentence_rep

log = logging.getLogger(__name__)

SELF_LOGIT = -1e6  # the authors' fill value for "self" (after dividing by tau)


def contrastive_loss(q: torch.Tensor, idx: torch.Tensor, labels: torch.Tensor | None,
                     bank: torch.Tensor, bank_labels: torch.Tensor | None, *, tau: float,
                     w_u: float, w_s: float, extra: int = 0, extra_idx: torch.Tensor | None = None,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """One bank's contrastive loss, METHODS 1.5 (the authors' ``calculate_contrastive_loss``).

    ``q [b, H]``: the student's normalised vectors (gradient flows); ``bank [N, R, H]``.
    Candidates: for each batch item j, stop-grad ``q_j`` followed by ``bank[idx_j, :]``; then
    ``M = min(extra // R, N)`` examples drawn without replacement from the whole bank
    (``extra_idx`` overrides the draw), each with its R entries. Logits ``q_i . c / tau``; the
    candidate ``stopgrad(q_i)`` (self) is excluded. Positives: same ``idx`` (unsupervised) or same
    label (supervised), self excluded. For each positive set P::

        L_P = - sum_i (1/|P(i)|) sum_{p in P(i)} log_softmax_i(p)  /  sum_i |P(i)|

    (the authors' double normalisation: per row by ``|P(i)|`` and again by the total count of
    positives, which is why their weights w_u, w_s are large). Returns ``w_u L_u + w_s L_s``;
    the supervised term is skipped when ``labels`` is None.
    """
    b, hdim = q.shape
    n, r, _ = bank.shape
    dev = q.device
    idx = idx.to(dev).long()
    if extra_idx is None:
        m = min(max(0, int(extra) // r), n)
        extra_idx = torch.randperm(n, generator=generator)[:m]
    extra_idx = extra_idx.long().cpu()
    own = bank.index_select(0, idx.cpu()).to(dev, q.dtype)                      # [b, R, H]
    cand = torch.cat([q.detach().unsqueeze(1), own], 1).reshape(b * (r + 1), hdim)
    cand = torch.cat([cand, bank.index_select(0, extra_idx).reshape(-1, hdim).to(dev, q.dtype)])
    cand_idx = torch.cat([idx.repeat_interleave(r + 1), extra_idx.to(dev).repeat_interleave(r)])
    is_self = torch.zeros(b, cand.shape[0], dtype=torch.bool, device=dev)
    is_self[torch.arange(b, device=dev), torch.arange(b, device=dev) * (r + 1)] = True
    logits = (q @ cand.t()) / tau
    logp = torch.log_softmax(logits.masked_fill(is_self, SELF_LOGIT), dim=-1)

    def term(pos: torch.Tensor) -> torch.Tensor:
        pos = pos & ~is_self
        count = pos.sum(1, keepdim=True)
        per_row = torch.where(pos, logp, torch.zeros_like(logp)).sum(1, keepdim=True) / count.clamp_min(1)
        return -per_row.sum() / count.sum().clamp_min(1)

    loss = w_u * term(idx.unsqueeze(1) == cand_idx.unsqueeze(0))
    if labels is not None and w_s and bank_labels is not None:
        labels = labels.to(dev)
        extra_lab = bank_labels.index_select(0, extra_idx).to(dev, labels.dtype)
        cand_lab = torch.cat([labels.repeat_interleave(r + 1), extra_lab.repeat_interleave(r)])
        loss = loss + w_s * term(labels.unsqueeze(1) == cand_lab.unsqueeze(0))
    return loss


@dataclass
class CapObjective:
    """CAP's per-step loss (METHODS 1.5 "Total per-step loss")::

        w_ce * CE(z_s, y) + w_kd * KD(z_s, z_t; T) + sum_{bank in PrC, SnC, FiC} (w_u L_u + w_s L_s)

    ``banks`` maps a name ("prc", "snc", "fic") to a :class:`MemoryBank`; empty banks are skipped.
    By default the same (tau, w_u, w_s, extra) serve every bank, as in the authors' code;
    ``bank_weight[name]`` multiplies that bank's ``w_u`` and ``w_s`` and ``bank_tau[name]``
    replaces its temperature (the issue's per-term weight and temperature, for ablations).
    """

    labels: torch.Tensor                    # [N] training labels in dataset order
    banks: dict[str, MemoryBank] = field(default_factory=dict)
    tau: float = 0.1
    w_u: float = 0.1
    w_s: float = 10.0
    extra: int = 4096
    w_ce: float = 0.1
    w_kd: float = 0.9
    kd_temperature: float = 2.0
    generator: torch.Generator | None = None
    bank_weight: dict = field(default_factory=dict)  # name -> multiplier of w_u and w_s (default 1)
    bank_tau: dict = field(default_factory=dict)     # name -> temperature (default ``tau``)
    last: dict = field(default_factory=dict)  # last step's loss terms (floats), for logging

    def __call__(self, logits, labels, q=None, idx=None, teacher_logits=None, embedding=None) -> torch.Tensor:
        loss = self.w_ce * task_loss(logits, labels, embedding) if self.w_ce else logits.sum() * 0.0
        # regression, embeddings, token tags and label sets: no sentence classes, so no supervised positives
        same_class = (None if one_output(logits) or embedding is not None or logits.dim() == 3
                      or multi_hot(logits, labels) else labels)
        self.last = {"ce": float(loss.detach())}
        if self.w_kd and teacher_logits is not None:
            kd = kd_kl(logits, teacher_logits, self.kd_temperature, embedding, labels)
            loss = loss + self.w_kd * kd
            self.last["kd"] = float(kd.detach())
        for name, bank in self.banks.items():
            scale = self.bank_weight.get(name, 1.0)
            if bank.data is None or q is None or idx is None or not scale:
                continue
            term = contrastive_loss(q, idx, same_class, bank.data, self.labels,
                                    tau=self.bank_tau.get(name, self.tau), w_u=scale * self.w_u,
                                    w_s=scale * self.w_s, extra=self.extra, generator=self.generator)
            loss = loss + term
            self.last[name] = float(term.detach())
        return loss


class CapLoss(Resumable):
    """CAP's training loss bound to one student ``model`` and its banks, as the hooks of
    :func:`passes._train.train` and of the importance pass use it.

    ``loader`` must list the training set in dataset order (it is used for every bank encoding).
    :meth:`encode_teacher` fills the FiC bank and caches the teacher's logits by ``idx``;
    :meth:`snapshot` appends the student's current vectors to a bank; ``encode_seconds`` sums
    the time of every encoding pass. Use it as a context manager while training (the forward
    hook that captures the student's sentence representation). What training changes outside
    the model, for checkpoints and worker processes (:meth:`state_dict`): the negatives'
    generator and the banks (SnC snapshots are appended at epoch ends).
    """

    def __init__(self, model, loader, n: int, objective: CapObjective, rep: str = "pooler"):
        self.model, self.loader, self.n, self.objective, self.rep = model, loader, n, objective, rep
        self.capture = RepCapture(model)
        self.teacher_logits: torch.Tensor | None = None
        self.encode_seconds = 0.0

    def __enter__(self) -> "CapLoss":
        self.capture.__enter__()
        return self

    def __exit__(self, *exc) -> bool:
        return self.capture.__exit__(*exc)

    def _encode(self, model):
        t0 = time.perf_counter()
        out = encode(model, self.loader, self.n, self.rep)
        self.encode_seconds += time.perf_counter() - t0
        return out

    def encode_teacher(self, teacher_model) -> None:
        """One pass of the frozen teacher: FiC vectors (if that bank is on) and cached logits."""
        reps, self.teacher_logits = self._encode(teacher_model)
        if "fic" in self.objective.banks:
            self.objective.banks["fic"].append(reps)

    def snapshot(self, bank: str) -> None:
        """Append the student's current vectors to ``bank`` (no-op if that bank is off)."""
        if bank in self.objective.banks:
            self.objective.banks[bank].append(self._encode(self.model)[0])
            log.info("cap: %s bank now has %d column(s)", bank, self.objective.banks[bank].columns)

    def __call__(self, model, batch, outputs=None) -> torch.Tensor:
        """The loss of ``batch`` (``outputs``: the training loop's forward; without it, e.g. in
        the importance pass, the batch is moved to the model's device and run here)."""
        if outputs is None:
            dev = next(model.parameters()).device
            batch = {k: v.to(dev) for k, v in batch.items()}
            outputs = model(**model_inputs(batch))
        q = None
        if self.objective.banks:
            q = sentence_rep(self.capture.output, batch.get("attention_mask"), self.rep)
        logits = logits_of(outputs, batch.get("attention_mask"))  # a QA model's start/end, stacked
        tl = self.teacher_logits
        if tl is not None:
            tl = tl[batch["idx"].cpu()].to(logits.device)
        return self.objective(logits, batch["labels"], q, batch["idx"], tl, embedding_settings(model))

    def state_dict(self) -> dict:
        """``generator`` (when the negatives are drawn) and ``bank_<name>`` for every bank."""
        gen = self.objective.generator
        out = {"generator": gen.get_state()} if gen is not None else {}
        return {**out, **{f"bank_{k}": b.state_dict() for k, b in self.objective.banks.items()}}

    def load_state_dict(self, state: dict) -> None:
        gen = self.objective.generator
        if gen is not None and "generator" in state:
            gen.set_state(state["generator"])
        for k, b in self.objective.banks.items():
            if f"bank_{k}" in state:
                b.load_state_dict(state[f"bank_{k}"])
