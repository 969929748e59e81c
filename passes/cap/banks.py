"""CAP's sentence representations and memory banks: Xu et al., "From Dense to Sparse: Contrastive
Pruning for Better Pre-trained Language Model Compression" (AAAI 2022, arXiv:2112.07198).

Following the authors' code (alibaba/AliceMind ``ContrastivePruning``: the bank handling of
``run_glue.py`` / ``UnstructuredPruning/masked_run_glue.py``), as summarised in METHODS.md
sections 1.3-1.4:

- :func:`sentence_rep`: the L2-normalised sentence representation (pooler output, raw [CLS] or
  masked mean of the last layer), no projection head (METHODS 1.3).
- :class:`RepCapture` and :func:`encode`: the representations of a model, during training or in
  one pass over the training set.
- :class:`MemoryBank`: ``[N, R, H]`` CPU tensor of stored representations indexed by the stable
  example ``idx`` (METHODS 1.4); PrC and FiC banks hold one column, the SnC bank one per snapshot.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from compressor.evaluation import logits_of, model_inputs
from passes._checkpoint import Resumable

REPS = ("pooler", "cls", "mean")


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
    ``idx`` for example ``idx`` (a token classifier's ``[n, S, C]``, zero-padded to the longest
    batch).

    One forward pass over ``loader`` (batches from :func:`compressor.evaluation.make_loader`) in
    eval mode (the model's mode is restored). Cost: one no-grad forward over the training set.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = logits = None
    tokens = []  # a token classifier's (idx, logits [b, S, C]) per batch
    with RepCapture(model) as cap:
        for batch in loader:
            inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
            z = logits_of(model(**inputs), inputs.get("attention_mask")).float().cpu()
            vec = sentence_rep(cap.output, inputs.get("attention_mask"), rep).cpu()
            if out is None:
                out, logits = torch.zeros(n, vec.shape[1]), torch.zeros(n, z.shape[-1])
            out[batch["idx"].cpu()] = vec
            if z.dim() == 3:
                tokens.append((batch["idx"].cpu(), z))
            else:
                logits[batch["idx"].cpu()] = z
    model.train(was_training)
    if out is None:
        return torch.zeros(n, 0), torch.zeros(n, 0)
    if tokens:
        logits = torch.zeros(n, max(z.shape[1] for _, z in tokens), tokens[0][1].shape[-1])
        for idx, z in tokens:
            logits[idx, :z.shape[1]] = z
    return out, logits


class MemoryBank(Resumable):
    """Stored representations ``[N, R, H]`` (CPU, float32) indexed by example ``idx``; ``data``
    and ``appended`` are what a checkpoint saves.

    ``max_columns`` bounds R (0 = unbounded): :meth:`append` drops the oldest column once the
    bank is full. Memory: ``N * R * H * 4`` bytes (e.g. 10k examples x 4 x 384 = 59 MiB;
    QQP 364k x 4 x 768 = 4.2 GiB).
    """

    resumable = ("data", "appended")

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
