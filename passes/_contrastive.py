"""CAP's losses and memory banks: Xu et al., "From Dense to Sparse: Contrastive Pruning for Better
Pre-trained Language Model Compression" (AAAI 2022, arXiv:2112.07198).

The paper's own equations were not available; everything here follows the authors' code
(alibaba/AliceMind ``ContrastivePruning``: ``StructuredPruning/model/PruneBert.py``
``calculate_contrastive_loss`` and the bank handling of ``run_glue.py`` /
``UnstructuredPruning/masked_run_glue.py``), as summarised in METHODS.md section 1.3-1.5:

- :func:`sentence_rep`: the L2-normalised sentence representation (pooler output, raw [CLS] or
  masked mean of the last layer), no projection head (METHODS 1.3).
- :class:`MemoryBank`: ``[N, R, H]`` CPU tensor of stored representations indexed by the stable
  example ``idx`` (METHODS 1.4); PrC and FiC banks hold one column, the SnC bank one per snapshot.
- :func:`contrastive_loss`: the supervised contrastive loss over one bank, with the authors'
  double normalisation (METHODS 1.5).
- KD is :func:`passes._distill.kd_kl`: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``.
- :class:`CapObjective`: ``w_ce * CE + w_kd * KD + sum over banks (w_u * L_u + w_s * L_s)``.
- :class:`CapLoss`: that objective bound to a student, its banks and the teacher's cached logits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from passes._distill import kd_kl

log = logging.getLogger(__name__)

REPS = ("pooler", "cls", "mean")
SELF_LOGIT = -1e6  # the authors' fill value for "self" (after dividing by tau)


def sentence_rep(base_output, attention_mask: torch.Tensor | None, rep: str = "pooler") -> torch.Tensor:
    """L2-normalised ``[B, H]`` sentence vectors from a BERT base model's output.

    ``pooler``: ``tanh(W_p h_CLS + b_p)`` (the authors' ``alignrep=cls`` for classification; falls
    back to the raw [CLS] state when the model has no pooler, as their QA model does);
    ``cls``: the raw last-layer [CLS] state; ``mean``: the attention-mask-weighted mean of the
    last-layer token states.
    """
    hidden = base_output[0]
    pooled = getattr(base_output, "pooler_output", None)
    if pooled is None and not hasattr(base_output, "pooler_output") and len(base_output) > 1:
        pooled = base_output[1]
    if rep == "pooler" and pooled is not None:
        vec = pooled
    elif rep == "mean":
        if attention_mask is None:
            vec = hidden.mean(1)
        else:
            m = attention_mask.to(hidden.dtype).unsqueeze(-1)
            vec = (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)
    else:
        vec = hidden[:, 0]
    return F.normalize(vec.float(), p=2, dim=-1)


class RepCapture:
    """Context manager: a forward hook on ``model.base_model`` that keeps its last output, so a
    normal ``model(**inputs)`` call also yields what :func:`sentence_rep` needs."""

    def __init__(self, model):
        self.base = getattr(model, "base_model", model)
        self.output = None
        self._handle = None

    def _hook(self, module, args, output):
        self.output = output

    def __enter__(self) -> "RepCapture":
        self._handle = self.base.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc) -> bool:
        self._handle.remove()
        self.output = None
        return False


@torch.no_grad()
def encode(model, loader, n: int, rep: str = "pooler") -> tuple[torch.Tensor, torch.Tensor]:
    """Representations ``[n, H]`` and logits ``[n, C]`` (CPU float32) of every example, row
    ``idx`` for example ``idx``.

    One forward pass over ``loader`` (batches from :func:`passes._train.make_loader`) in eval mode
    (the model's mode is restored). Cost: one no-grad forward over the training set.
    """
    from passes._train import model_inputs

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = logits = None
    with RepCapture(model) as cap:
        for batch in loader:
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            z = model(**inputs).logits.float().cpu()
            vec = sentence_rep(cap.output, inputs.get("attention_mask"), rep).cpu()
            if out is None:
                out, logits = torch.zeros(n, vec.shape[1]), torch.zeros(n, z.shape[1])
            out[batch["idx"].cpu()], logits[batch["idx"].cpu()] = vec, z
    model.train(was_training)
    if out is None:
        return torch.zeros(n, 0), torch.zeros(n, 0)
    return out, logits


class MemoryBank:
    """Stored representations ``[N, R, H]`` (CPU, float32) indexed by example ``idx``.

    ``max_columns`` bounds R (0 = unbounded): :meth:`append` drops the oldest column once the
    bank is full. Memory: ``N * R * H * 4`` bytes (e.g. 10k examples x 4 x 384 = 59 MiB;
    QQP 364k x 4 x 768 = 4.2 GiB).
    """

    def __init__(self, name: str, max_columns: int = 0):
        self.name, self.max_columns = name, int(max_columns)
        self.data: torch.Tensor | None = None
        self.appended = 0  # columns ever appended (dropped ones included)

    @property
    def columns(self) -> int:
        return 0 if self.data is None else int(self.data.shape[1])

    @property
    def nbytes(self) -> int:
        return 0 if self.data is None else self.data.numel() * self.data.element_size()

    def append(self, reps: torch.Tensor) -> None:
        """Add one column ``reps [N, H]``; drop the oldest beyond ``max_columns``."""
        col = reps.detach().float().cpu().unsqueeze(1)
        if self.data is not None and self.data.shape[::2] != col.shape[::2]:
            raise ValueError(f"bank {self.name}: new column has shape {tuple(reps.shape)}, "
                             f"bank rows are {tuple(self.data.shape[::2])}")
        self.data = col if self.data is None else torch.cat([self.data, col], dim=1)
        if self.max_columns and self.data.shape[1] > self.max_columns:
            self.data = self.data[:, -self.max_columns:].contiguous()
        self.appended += 1


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

    def __call__(self, logits, labels, q=None, idx=None, teacher_logits=None) -> torch.Tensor:
        loss = self.w_ce * F.cross_entropy(logits, labels) if self.w_ce else logits.sum() * 0.0
        self.last = {"ce": float(loss.detach())}
        if self.w_kd and teacher_logits is not None:
            kd = kd_kl(logits, teacher_logits, self.kd_temperature)
            loss = loss + self.w_kd * kd
            self.last["kd"] = float(kd.detach())
        for name, bank in self.banks.items():
            scale = self.bank_weight.get(name, 1.0)
            if bank.data is None or q is None or idx is None or not scale:
                continue
            term = contrastive_loss(q, idx, labels, bank.data, self.labels,
                                    tau=self.bank_tau.get(name, self.tau), w_u=scale * self.w_u,
                                    w_s=scale * self.w_s, extra=self.extra, generator=self.generator)
            loss = loss + term
            self.last[name] = float(term.detach())
        return loss


class CapLoss:
    """CAP's training loss bound to one student ``model`` and its banks, as the hooks of
    :func:`passes._train.train` and of the importance pass use it.

    ``loader`` must list the training set in dataset order (it is used for every bank encoding).
    :meth:`encode_teacher` fills the FiC bank and caches the teacher's logits by ``idx``;
    :meth:`snapshot` appends the student's current vectors to a bank; ``encode_seconds`` sums
    the time of every encoding pass. Use it as a context manager while training (the forward
    hook that captures the student's sentence representation).
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
        from passes._train import model_inputs
        if outputs is None:
            dev = next(model.parameters()).device
            batch = {k: v.to(dev) for k, v in batch.items()}
            outputs = model(**model_inputs(batch))
        q = None
        if self.objective.banks:
            q = sentence_rep(self.capture.output, batch.get("attention_mask"), self.rep)
        tl = self.teacher_logits
        if tl is not None:
            tl = tl[batch["idx"].cpu()].to(outputs.logits.device)
        return self.objective(outputs.logits, batch["labels"], q, batch["idx"], tl)


def method_state(loss, **items):
    """What CAP's hooks change while training, for checkpoints and worker processes: the
    negatives' generator, the banks (SnC snapshots are appended at epoch ends) and ``items``."""
    from passes._checkpoint import Attrs, MethodState
    banks = {f"bank_{k}": Attrs(b, "data", "appended") for k, b in loss.objective.banks.items()}
    generator = {"generator": loss.objective.generator} if loss.objective.generator is not None else {}
    return MethodState(**generator, **banks, **items)
