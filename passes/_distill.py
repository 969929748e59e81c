"""Distillation losses shared by the method passes (SparseBERT, CAP, and :class:`LogitKD` for
magnitude, NIP, RPP and ``distill``).

Implements the TinyBERT-style losses SparseBERT trains with (Xu, Yen, Zhao, Xiao, "Rethinking
Network Pruning -- under the Pre-train and Fine-tune Paradigm", NAACL 2021, arXiv:2104.08682;
authors' code dongkuanx27/SparseBERT ``main_functions/task_distill_prune_simultaneously.py``),
plus the Hinton KL form of knowledge distillation CAP uses:

- :func:`soft_cross_entropy`: the authors' prediction loss, mean over (batch x classes) of
  ``-softmax(z_t/T) * log_softmax(z_s/T)``; no ``T^2`` (so it is ``1/C`` of the usual soft CE).
- :func:`kd_kl`: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))`` averaged over the batch (METHODS.md
  notation ``KD``; what CAP's helper can reuse).
- :func:`hidden_mse`: ``sum_j MSE(H_s^j, H_t^{m(j)})``, ``j = 0`` the embedding output; no learned
  projection: a student narrowed by ``hidden-prune`` is compared with the teacher's states at the
  units it kept (:func:`teacher_units`).
- :class:`ScoreCapture` and :func:`attention_mse`: pre-softmax attention scores
  ``Q K^T / sqrt(d) + mask`` recorded with forward hooks on each layer's query/key Linears (HF's
  ``output_attentions`` gives post-softmax probabilities), compared by MSE with padded keys set
  to 0 in both (the authors replace entries ``<= -100`` by 0; we zero by the attention mask, the
  same entries unless a real score is below -100).
- :func:`layer_map`: TinyBERT's uniform mapping of student to teacher layers.

MSEs are means over all elements, padded query positions included, as in the authors' code.

Regression (a head with one output, ``problem_type="regression"``): a softmax over one logit is
constant, so :func:`kd_kl` and :func:`soft_cross_entropy` distil by ``MSE(z_s, z_t)`` to the
teacher's output instead (no temperature), and :func:`task_loss` (the hard-label term) is MSE to
the label instead of cross-entropy. Every method that uses these helpers (magnitude, NIP, RPP,
``distill``, SparseBERT, CAP) trains a regression model so.

Token classification (logits ``[B, S, C]``, labels ``[B, S]`` with -100 where a position has no
tag): :func:`task_loss` is the per-token cross-entropy on the tagged positions (HF's), and
:func:`kd_kl` and :func:`soft_cross_entropy` compare student and teacher on the same positions
(given ``labels``; :func:`token_rows` flattens them to ``[n, C]``), so KD is per token.

Multi-label (logits ``[B, K]``, labels 0/1 floats ``[B, K]``, ``problem_type=
"multi_label_classification"``): :func:`task_loss` is BCE with logits (HF's), and :func:`kd_kl` and
:func:`soft_cross_entropy` are :func:`multi_label_kd`, the BCE of the student's
``sigmoid(z_s/T)`` against the teacher's ``sigmoid(z_t/T)`` times ``T^2`` (each label its own
two-way softmax, the Hinton form per label). A batch is told multi-label by its float
``labels`` of the logits' shape.

Question answering (logits ``[B, S, 2]``: start and end stacked by
:func:`compressor.evaluation.logits_of`, padded positions at ``SPAN_MASK``; labels ``[B, 2]``, the
start and end positions): :func:`task_loss` is the mean of the start and end cross-entropies over
the sequence, and the KD terms compare the start and the end distributions over the sequence
(:func:`span_rows`: ``[2B, S]`` rows, the teacher's padded positions masked like the student's).
A token classifier has at least 3 tags, so a last axis of 2 tells QA logits.
"""

from __future__ import annotations

import logging
import math
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from compressor.evaluation import labelled as labelled_rows
from compressor.evaluation import logits_of
from passes.families import family_of

log = logging.getLogger(__name__)

MASK_VALUE = -10000.0
"""Additive mask for padded keys in captured scores (BERT/TinyBERT convention; the losses zero
those entries anyway, so the value never reaches a loss)."""


def embedding_settings(model) -> dict | None:
    """An embedding model's settings (:mod:`compressor.embedder`: its "logits" are the sentence
    embedding, and every distillation term below becomes :func:`compressor.embedder.embedding_loss`
    to the target embedding), or None for a classifier or regressor. ``model`` may be wrapped
    (DDP's ``.module``)."""
    from compressor.embedder import settings_of
    return settings_of(getattr(model, "module", model))


def one_output(logits: torch.Tensor) -> bool:
    """Whether ``logits`` come from a regression head (one output per example)."""
    return logits.shape[-1] == 1


def regression_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KD for a regression head: ``MSE(z_s, z_t)`` to the teacher's output, mean over the batch."""
    return F.mse_loss(student_logits.float(), teacher_logits.detach().float())


def multi_hot(logits: torch.Tensor, labels: torch.Tensor | None) -> bool:
    """Whether ``labels`` are a multi-label batch's 0/1 targets for ``logits``: floats of the same
    ``[B, K]`` shape, ``K > 1`` (an embedding model's float targets are told apart by its settings)."""
    return (labels is not None and labels.is_floating_point() and logits.dim() == 2
            and tuple(labels.shape) == tuple(logits.shape) and logits.shape[-1] > 1)


def multi_label_kd(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """KD for a multi-label head: ``T^2 * BCE(sigmoid(z_s/T), sigmoid(z_t/T))``, mean over the
    batch and the labels."""
    t = temperature
    target = torch.sigmoid(teacher_logits.detach().float() / t)
    return F.binary_cross_entropy_with_logits(student_logits.float() / t, target) * (t * t)


def is_span(logits: torch.Tensor) -> bool:
    """Whether ``logits`` are a QA model's stacked start/end logits ``[B, S, 2]``."""
    return logits.dim() == 3 and logits.shape[-1] == 2


def span_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A QA model's student and teacher logits ``[B, S, 2]`` as ``[2B, S]`` rows (each window's
    start row, then its end row): softmax classes are the positions. The teacher's are cut to the
    student's ``S`` (cached ones are padded to the longest batch) and masked where the student's
    are (its padded positions, at ``SPAN_MASK``)."""
    from compressor.evaluation import SPAN_MASK
    teacher_logits = teacher_logits[:, :student_logits.shape[1]].to(student_logits.device, student_logits.dtype)
    keep = student_logits.detach() > SPAN_MASK / 2
    teacher_logits = teacher_logits.masked_fill(~keep, SPAN_MASK)
    return student_logits.transpose(1, 2).flatten(0, 1), teacher_logits.transpose(1, 2).flatten(0, 1)


def token_rows(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A token classifier's student and teacher logits ``[B, S, C]`` as ``[n, C]`` rows of the
    positions with a tag (``labels >= 0``; every position without ``labels``); the teacher's are
    cut to the student's ``S`` (cached teacher logits are padded to the longest batch). Other
    logits are returned as they are."""
    if student_logits.dim() != 3:
        return student_logits, teacher_logits
    teacher_logits = teacher_logits[:, :student_logits.shape[1]]
    if labels is None:
        return student_logits.flatten(0, 1), teacher_logits.flatten(0, 1)
    keep = labels.to(student_logits.device) >= 0
    return student_logits[keep], teacher_logits.to(student_logits.device)[keep]


def task_loss(logits: torch.Tensor, labels: torch.Tensor, embedding: dict | None = None) -> torch.Tensor:
    """The hard-label loss: cross-entropy on class ids, or for a regression head (one output)
    ``MSE(z_s, y)`` (what HF's ``problem_type="regression"`` head computes), or for an embedding
    model (``embedding``: its settings) the embedding loss to the target embeddings, or for a token
    classifier the mean cross-entropy over the tagged positions (-100: none), or for a multi-label
    head (0/1 float ``labels`` of the logits' shape) BCE with logits, or for a QA model (logits
    ``[B, S, 2]``, labels ``[B, 2]``) the mean of the start and end cross-entropies."""
    if is_span(logits):
        return F.cross_entropy(logits.transpose(1, 2).flatten(0, 1), labels.flatten().to(logits.device))
    if logits.dim() == 3:
        return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
    if embedding is not None:
        from compressor.embedder import embedding_loss
        return embedding_loss(logits, labels, embedding)
    if multi_hot(logits, labels):
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())
    if one_output(logits):
        return F.mse_loss(logits[:, 0].float(), labels.float())
    return F.cross_entropy(logits, labels)


def _not_softmax_kd(student_logits, teacher_logits, embedding, labels, temperature: float = 1.0):
    """What :func:`soft_cross_entropy` and :func:`kd_kl` share: ``(loss, None, None)`` where the
    distillation is not over a softmax of classes (an embedding model's loss, no tagged position,
    a regression head, a multi-label head: :func:`multi_label_kd`), else ``(None, student rows,
    teacher rows)`` (a token classifier's tagged positions, :func:`token_rows`)."""
    if embedding is not None:
        return task_loss(student_logits, teacher_logits, embedding), None, None
    if multi_hot(student_logits, labels):
        return multi_label_kd(student_logits, teacher_logits, temperature), None, None
    if is_span(student_logits):  # QA: the start and end distributions over the sequence
        return (None, *span_rows(student_logits, teacher_logits))
    student_logits, teacher_logits = token_rows(student_logits, teacher_logits, labels)
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0, None, None
    if one_output(student_logits):
        return regression_kd(student_logits, teacher_logits), None, None
    return None, student_logits, teacher_logits


def soft_cross_entropy(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       temperature: float = 1.0, embedding: dict | None = None,
                       labels: torch.Tensor | None = None) -> torch.Tensor:
    """SparseBERT's prediction loss: ``mean(-softmax(z_t/T) * log_softmax(z_s/T))`` over batch
    and classes (authors' ``soft_cross_entropy``; T=1 there, no ``T^2`` factor). A regression
    head: :func:`regression_kd`; an embedding model: :func:`task_loss` to the teacher's embedding;
    a token classifier: over the tagged positions of ``labels`` (:func:`token_rows`)."""
    loss, student_logits, teacher_logits = _not_softmax_kd(student_logits, teacher_logits, embedding, labels,
                                                           temperature)
    if loss is not None:
        return loss
    t = temperature
    target = F.softmax(teacher_logits.detach() / t, dim=-1)
    return (-target * F.log_softmax(student_logits / t, dim=-1)).mean()


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
          temperature: float = 1.0, embedding: dict | None = None,
          labels: torch.Tensor | None = None) -> torch.Tensor:
    """Hinton KD: ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``, summed over classes and
    averaged over the batch. A regression head: :func:`regression_kd`; an embedding model:
    :func:`task_loss` to the teacher's embedding; a token classifier: averaged over the tagged
    positions of ``labels`` (:func:`token_rows`)."""
    loss, student_logits, teacher_logits = _not_softmax_kd(student_logits, teacher_logits, embedding, labels,
                                                           temperature)
    if loss is not None:
        return loss
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher hidden-state index for each student hidden-state index ``j = 0..L_s``:
    ``round(j * L_t / L_s)`` (TinyBERT's uniform mapping; 1:1 when the counts are equal).
    Student layer ``l`` (1-based) is distilled from teacher layer ``map[l]``."""
    if student_layers < 1 or teacher_layers < 1:
        raise ValueError(f"layer counts must be >= 1, got student {student_layers}, teacher {teacher_layers}")
    return [round(j * teacher_layers / student_layers) for j in range(student_layers + 1)]


def hidden_mse(student_hidden, teacher_hidden, mapping: list[int] | None = None,
               units: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_j MSE(H_s^j, H_t^{mapping[j]})`` over the student's hidden states (embedding output
    first, as ``output_hidden_states=True`` returns them). ``mapping`` defaults to
    :func:`layer_map` of the two lengths. ``units``: the teacher's hidden units the student kept
    (a narrower student, :func:`teacher_units`), a fixed projection of the teacher's states."""
    if mapping is None:
        mapping = layer_map(len(student_hidden) - 1, len(teacher_hidden) - 1)
    total = student_hidden[0].new_zeros(())
    for j, h_s in enumerate(student_hidden):
        h_t = teacher_hidden[mapping[j]].detach()
        total = total + F.mse_loss(h_s, h_t if units is None else h_t.index_select(-1, units.to(h_t.device)))
    return total


def teacher_units(student: nn.Module, teacher: nn.Module) -> torch.Tensor | None:
    """Which of the teacher's hidden units each of the student's is (``config.compressor_hidden``
    ``kept``, written by ``hidden-prune``: indices into the first model's units, on both sides), or
    None when the two are as wide. ValueError when the student keeps a unit the teacher lacks."""
    def kept(model) -> list[int]:
        model = getattr(model, "module", model)
        record = getattr(model.config, "compressor_hidden", None)
        return list(record["kept"]) if record else list(range(family_of(model).hidden_size()))
    s, t = kept(student), kept(teacher)
    if s == t:
        return None
    where = {unit: i for i, unit in enumerate(t)}
    missing = [u for u in s if u not in where]
    if missing:
        raise ValueError(f"the student keeps hidden units {missing[:5]} the teacher does not have: "
                         "distil from a teacher at least as wide (the fine-tuned one)")
    return torch.tensor([where[u] for u in s], dtype=torch.long)


def zero_padded_keys(scores: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Scores ``[B, H, S, S]`` with the columns of padded keys (``attention_mask == 0``) set to 0."""
    if attention_mask is None:
        return scores
    pad = (attention_mask == 0)[:, None, None, :]
    return scores.masked_fill(pad, 0.0)


def attention_mse(student_scores, teacher_scores, attention_mask=None, mapping=None,
                  heads=None) -> tuple[torch.Tensor, list[int]]:
    """``sum_l MSE(A_s^l, A_t^{m(l)})`` over student layers on pre-softmax scores, padded keys
    zeroed in both. Returns ``(loss, skipped)``.

    - ``mapping``: teacher hidden-state index per student hidden-state index (:func:`layer_map`);
      student layer ``l`` (0-based) is compared with teacher layer ``mapping[l + 1] - 1``.
    - ``heads``: optional per-layer list of kept head indices (``None`` = all): only those heads
      enter the MSE (a masked head is not pushed towards the teacher).
    - A layer is skipped (its index returned in ``skipped``) when either side has no scores
      (0 heads) or the kept student heads do not match the teacher's shape (physically removed
      heads: which teacher head each remaining head corresponds to is unknown).
    """
    n = len(student_scores)
    if mapping is None:
        mapping = layer_map(n, len(teacher_scores))
    total, skipped = None, []
    for layer, a_s in enumerate(student_scores):
        a_t = teacher_scores[mapping[layer + 1] - 1]
        if a_s is None or a_t is None:
            skipped.append(layer)
            continue
        keep = None if heads is None else heads[layer]
        if keep is not None:
            if len(keep) == 0:
                skipped.append(layer)
                continue
            if a_s.shape[1] != a_t.shape[1]:
                skipped.append(layer)
                continue
            idx = torch.as_tensor(list(keep), dtype=torch.long, device=a_s.device)
            a_s, a_t = a_s.index_select(1, idx), a_t.index_select(1, idx)
        if a_s.shape != a_t.shape:
            skipped.append(layer)
            continue
        term = F.mse_loss(zero_padded_keys(a_s, attention_mask),
                          zero_padded_keys(a_t.detach(), attention_mask))
        total = term if total is None else total + term
    if total is None:
        ref = next((a for a in student_scores if a is not None), None)
        total = ref.new_zeros(()) if ref is not None else torch.zeros(())
    return total, skipped


class ScoreCapture:
    """Context manager recording each encoder layer's pre-softmax attention scores.

    Forward hooks on the family's ``query`` and ``key`` Linears (:mod:`passes.families`) keep their
    outputs ``[B, S, H*d]``; :meth:`scores` recomputes ``Q K^T / sqrt(d)`` per head plus the
    additive padding mask. Independent of the attention implementation (eager/sdpa) and of the
    transformers version (4.57 and 5.x both project with these Linears). The head count is read
    from the output width (``H = width // head_size``), so unevenly stripped layers work; a layer
    without query/key (0 heads, e.g. :class:`passes.families.bert.NoHeads`) yields ``None``.
    Only the first call of each Linear in a layer's forward counts (DeBERTa with ``share_att_key``
    calls query/key again on its relative position embeddings; its scores here are the
    content-to-content term, without c2p/p2c). Hold one capture per model and call :meth:`scores`
    after each forward.
    """

    def __init__(self, model: nn.Module):
        self.family = family_of(model)
        self.layers = self.family.layers()
        self._out: dict[tuple[int, str], torch.Tensor] = {}
        self._handles: list = []

    def _save(self, key, module, args, output):
        self._out.setdefault(key, output)

    def _reset(self, i, module, args):
        self._out.pop((i, "query"), None)
        self._out.pop((i, "key"), None)

    def __enter__(self) -> "ScoreCapture":
        for i, layer in enumerate(self.layers):
            self._handles.append(layer.register_forward_pre_hook(partial(self._reset, i)))
            for name in ("query", "key"):
                mod = self.family.linear(layer, name)
                if isinstance(mod, nn.Module):
                    self._handles.append(mod.register_forward_hook(partial(self._save, (i, name))))
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self._out.clear()
        return False

    def scores(self, attention_mask: torch.Tensor | None = None,
               mask_value: float = MASK_VALUE) -> list[torch.Tensor | None]:
        """Per layer ``[B, H, S, S]`` scores of the last forward (``None`` for a layer with no
        heads): ``Q K^T / sqrt(d)``, plus ``mask_value`` on padded keys if a mask is given."""
        out: list[torch.Tensor | None] = []
        for i, layer in enumerate(self.layers):
            q, k = self._out.get((i, "query")), self._out.get((i, "key"))
            d = self.family.head_size(layer) if q is not None and k is not None else 0
            if q is None or k is None or d == 0 or q.shape[-1] == 0:
                out.append(None)
                continue
            b, s, width = q.shape
            heads = width // d
            qh = q.view(b, s, heads, d).transpose(1, 2)
            kh = k.view(b, k.shape[1], heads, d).transpose(1, 2)
            scores = torch.matmul(qh, kh.transpose(-1, -2)) / math.sqrt(d)
            if attention_mask is not None:
                add = (1.0 - attention_mask[:, None, None, :].to(scores.dtype)) * mask_value
                scores = scores + add
            out.append(scores)
        return out


class LogitKD:
    """The recovery loss of the passes that prune a fine-tuned model (magnitude, NIP, RPP, and
    ``distill`` after structured pruning): logit distillation from the dense fine-tuned teacher,
    as the oBERT / SparseML BERT recipes train (Kurtic et al., "The Optimal BERT Surgeon", 2022,
    arXiv:2203.07259, Sec. 4: hardness 1.0, temperature 2)::

        loss = hardness * T^2 KL(softmax(z_t/T) || softmax(z_s/T)) + (1 - hardness) * CE(z_s, y)
               + hidden_weight * sum_j MSE(H_s^j, H_t^m(j))

    A ``passes._train.train`` ``loss_fn``. The teacher's logits come from ``teacher_logits``
    (``[N, C]``, one row per training example, looked up by the batch's ``idx``: one no-grad pass
    before training instead of one per step; the teacher is frozen in eval mode, so this equals a
    per-step teacher forward). The hidden-state term needs the teacher's per-token states, too big
    to cache, so with ``hidden_weight > 0`` the teacher runs on each batch (and its logits are used
    directly); the student must then be called with ``output_hidden_states=True``. Examples
    without a label (``label < 0``, e.g. augmented text) only enter the distillation terms.
    """

    def __init__(self, teacher_logits: torch.Tensor | None, temperature: float = 2.0,
                 hardness: float = 1.0, hidden_weight: float = 0.0, teacher: nn.Module | None = None):
        if hidden_weight > 0 and teacher is None:
            raise ValueError("hidden-state distillation needs the teacher model")
        if teacher_logits is None and teacher is None:
            raise ValueError("logit distillation needs the teacher's logits or the teacher model")
        self.logits, self.t, self.hardness = teacher_logits, float(temperature), float(hardness)
        self.hidden_weight, self.teacher = float(hidden_weight), teacher

    @property
    def forward_kwargs(self) -> dict:
        """Extra arguments of the student's forward."""
        return {"output_hidden_states": True} if self.hidden_weight > 0 else {}

    def __call__(self, model, batch, outputs) -> torch.Tensor:
        z_s = logits_of(outputs, batch.get("attention_mask"))
        t_hidden = None
        if self.hidden_weight > 0:
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in batch}
            if next(self.teacher.parameters()).device != z_s.device:
                self.teacher.to(z_s.device)
            with torch.no_grad():
                t_out = self.teacher(**inputs, output_hidden_states=True)
            z_t, t_hidden = logits_of(t_out, batch.get("attention_mask")), t_out.hidden_states
        else:
            z_t = self.logits.index_select(0, batch["idx"].cpu()).to(z_s.device, z_s.dtype)
        emb = embedding_settings(model)
        labels = batch["labels"]
        loss = self.hardness * kd_kl(z_s, z_t, self.t, emb, labels) if self.hardness > 0 else z_s.new_zeros(())
        labelled = labelled_rows(labels)
        if self.hardness < 1 and bool(labelled.any()):
            loss = loss + (1 - self.hardness) * task_loss(z_s[labelled], labels[labelled], emb)
        if t_hidden is not None:
            units = teacher_units(model, self.teacher)  # a student narrowed by hidden-prune: its units
            loss = loss + self.hidden_weight * hidden_mse(outputs.hidden_states, t_hidden, units=units)
        return loss
