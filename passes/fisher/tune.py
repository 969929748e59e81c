"""Kwon et al.'s mask tuning: rescale the kept heads and neurons of each sublayer by least
squares so its output matches the teacher's (METHODS-structured.md section 1.6).

Kwon, Kim, Mahoney, Hassoun, Keutzer, Gholami, "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022, arXiv:2204.09656), "mask tuning"; the authors' code
``prune/rescale.py`` and ``utils/linalg.py``. Layer by layer, attention before FFN; the
student's inputs come from the student with the masks tuned so far, the teacher's from the
teacher masks (the same model, other masks). Per sublayer with kept units S and the residual
``r`` of the sublayer (input of its LayerNorm minus the output projection):

- heads: column ``a_h(t) = W_O[:, h] ctx_h(t)`` (student context), target
  ``y(t) = (W_O (m_T ctx_T)(t) + b_O + r_T(t)) - b_O - r_s(t)``;
- neurons: ``a_i(t) = h_i(t) w_i`` (post-GELU activation times FC2 column), with
  ``A^T A = (W_S^T W_S) o (sum_t h_S h_S^T)`` and ``(A^T y)_i = sum_t h_i(t) w_i^T y(t)``.

Tokens are the non-padding ones; the last layer uses only [CLS] (what the classifier reads).
With ``G = A^T A``, ``r = A^T y - G m0`` (m0 = the binary masks), ``delta = (G^2 + damp^2 I)^{-1}
G r`` (the authors' LSMR on ``G delta = r`` with damp 1) and ``m = m0 + delta``. Fixes to the
authors' code: no intercept column (it can make the plain error worse), one unknown solved like
any other, the teacher's target at the layer being tuned uses its masked FFN. As theirs: on a
failed solve or any ``|m| > limit`` this and all later sublayers keep their binary masks.
Differences from theirs: layer 0's attention is tuned too (their code skips it).

Cost: the inputs of layer 0 and the encoder's extra layer arguments are captured once; then per
layer the self-attention runs through the layer itself (stopped at the input of its ``attn_out``
projection) and the rest piecewise through the family adapter's pieces (the attention and FFN
blocks' output projection and norm, the FFN's hidden units; dropout is identity in eval),
about two forwards of the layer in all, instead of re-running the model up to it.
"""

from __future__ import annotations

import logging
from functools import partial

import torch

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


class _Inputs:
    """Per mini-batch hidden states entering layer 0 and what the encoder passes each layer
    besides them (the attention mask as this transformers version prepares it, ...; per layer:
    transformers 5's ModernBERT passes its sliding-window layers another mask and rotary), captured
    once; :meth:`attention_inputs` then runs one layer's self-attention on any hidden states."""

    def __init__(self, model, masks, loader):
        from compressor.evaluation import model_inputs
        self.masks, self.batches, self.extra, self.hidden = masks, [], [], []
        device = next(model.parameters()).device

        def pre(index, mod, args, kwargs):
            if index == 0:
                self.hidden.append(args[0])
                self.extra.append([])
            self.extra[-1].append((args[1:], kwargs))
            if index == len(masks.layers) - 1:
                raise _Stop
        handles = [layer.register_forward_pre_hook(partial(pre, i), with_kwargs=True)
                   for i, layer in enumerate(masks.layers)]
        try:
            with torch.no_grad():
                for batch in loader:
                    self.batches.append(batch)
                    try:
                        model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
                    except _Stop:
                        pass
        finally:
            for handle in handles:
                handle.remove()

    def attention_inputs(self, layer: int, i: int, hidden):
        """``(context, residual)`` entering the attention block of ``layer`` for batch ``i``: the
        input of the layer's ``attn_out`` Linear before the masks scale it (a pre-hook run ahead of
        theirs), and the layer's input ``hidden`` (the residual of a post-norm attention block)."""
        got = {}
        out_proj = self.masks.family.linear(self.masks.layers[layer], "attn_out")

        def pre(mod, args):
            got["c"] = args[0]
            raise _Stop
        handle = out_proj.register_forward_pre_hook(pre, prepend=True)
        args, kwargs = self.extra[i][layer]
        try:
            self.masks.layers[layer](hidden, *args, **kwargs)
        except _Stop:
            pass
        finally:
            handle.remove()
        return got["c"], hidden


class _Normal:
    """Streamed ``G = A^T A``, ``A^T y`` and ``y^T y`` (float64) of one sublayer's kept units."""

    def __init__(self, kind: str, weight, kept: list[int], heads: int, head_size: int):
        self.kind, self.H, self.d = kind, heads, head_size
        self.idx = torch.tensor(kept, dtype=torch.long, device=weight.device)
        self.w = weight.detach().unflatten(-1, (heads, head_size))[:, self.idx] if kind == "heads" \
            else weight.detach()[:, self.idx]
        n = len(kept)
        self.G = torch.zeros(n, n, dtype=torch.float64, device=weight.device)
        self.Aty = torch.zeros(n, dtype=torch.float64, device=weight.device)
        self.yty = 0.0

    def add(self, x, y) -> None:
        """``x``: the unmasked inputs of the output projection (tokens x in), ``y``: the target."""
        self.yty += float((y.double() ** 2).sum())
        if self.kind == "heads":
            ctx = x.unflatten(-1, (self.H, self.d))[:, self.idx]  # [N, n, d_h]
            a = torch.einsum("tkj,ikj->tki", ctx, self.w)  # [N, n, d_model]
            self.G += torch.einsum("tki,tli->kl", a, a).double()
            self.Aty += torch.einsum("tki,ti->k", a, y).double()
        else:
            h = x[:, self.idx]  # [N, n]; G = (W^T W) o (sum h h^T), finished in result()
            self.G += (h.T @ h).double()
            self.Aty += (h * (y @ self.w)).sum(0).double()

    def result(self):
        if self.kind == "ffn":
            w = self.w.double()
            return (w.T @ w) * self.G, self.Aty, self.yty
        return self.G, self.Aty, self.yty


def _tokens(batch, cls_only: bool, device):
    mask = batch["attention_mask"].to(device).bool()
    if cls_only:
        mask = torch.zeros_like(mask)
        mask[:, 0] = True
    return mask


def solve(G: torch.Tensor, rhs: torch.Tensor, damp: float = 1.0) -> torch.Tensor:
    """``(G^2 + damp^2 I)^{-1} G rhs`` for symmetric ``G`` (float64): the damped least-squares
    solution of ``G delta = rhs``, LSMR's answer, computed from ``G = Q diag(l) Q^T`` as
    ``Q diag(l / (l^2 + damp^2)) Q^T rhs`` (stable where G is ill-conditioned)."""
    lam, Q = torch.linalg.eigh(G)
    return Q @ ((lam / (lam * lam + damp * damp)) * (Q.T @ rhs))


def ls_error(G, Aty, yty, m) -> float:
    """``||A m - y||^2`` from the accumulated system."""
    return float(m @ G @ m - 2 * m @ Aty + yty)


def tune_masks(model, masks, loader, teacher, damp: float = 1.0, limit: float = 10.0,
               cls_last: bool = True) -> list[dict]:
    """Tune ``masks.head`` / ``masks.ffn`` (binary on entry, the student's) in place, layer by
    layer, against the ``teacher = (head, ffn)`` masks (module doc). The teacher's and student's
    layer inputs are kept per mini-batch and each layer is computed piecewise (self-attention by
    the layer itself, then the output projections, norms and FFN by the family's pieces), so a
    layer costs about two forwards of it. Returns one record per sublayer: unknowns, LS error
    before / after (and relative to ``||y||^2``), status."""
    fam, data = masks.family, _Inputs(model, masks, loader)
    T, S = list(data.hidden), list(data.hidden)  # the embeddings do not depend on the masks
    report, state = [], {"aborted": False}
    with torch.no_grad():
        for layer in range(masks.L):
            lay = masks.layers[layer]
            att_out, inter, ffn_out = fam.linear(lay, "attn_out"), fam.ffn_hidden(lay), fam.linear(lay, "ffn_out")
            cls_only = cls_last and layer == masks.L - 1
            acc = _start(masks, "heads", layer, att_out.weight, state, report)
            t_att, s_ctx = [], []
            for i, batch in enumerate(data.batches):
                masks.set(*teacher)
                ctx_t, res_t = data.attention_inputs(layer, i, T[i])
                pre_t = fam.block_pre_norm(lay, "attn", ctx_t, res_t)
                t_att.append(fam.block_norm(lay, "attn", pre_t))
                masks.set(*state["student"])
                ctx_s, res_s = data.attention_inputs(layer, i, S[i])
                s_ctx.append((ctx_s, res_s))
                if acc is not None:
                    sel = _tokens(batch, cls_only, ctx_s.device)
                    acc.add(ctx_s[sel], (pre_t - _bias(att_out) - res_s)[sel])
            _finish(acc, masks, "heads", layer, damp, limit, state, report)
            acc = _start(masks, "ffn", layer, ffn_out.weight, state, report)
            for i, batch in enumerate(data.batches):
                masks.set(*state["student"])
                ctx_s, res_s = s_ctx[i]
                s_att = fam.block_norm(lay, "attn", fam.block_pre_norm(lay, "attn", ctx_s, res_s))
                h_s = inter(s_att)
                s_ctx[i] = s_att
                masks.set(*teacher)
                pre_t = fam.block_pre_norm(lay, "ffn", inter(t_att[i]), t_att[i])
                T[i] = fam.block_norm(lay, "ffn", pre_t)
                if acc is not None:
                    sel = _tokens(batch, cls_only, s_att.device)
                    acc.add(h_s[sel], (pre_t - _bias(ffn_out) - s_att)[sel])
            _finish(acc, masks, "ffn", layer, damp, limit, state, report)
            masks.set(*state["student"])
            for i in range(len(S)):
                S[i] = fam.block_norm(lay, "ffn", fam.block_pre_norm(lay, "ffn", inter(s_ctx[i]), s_ctx[i]))
    masks.set(*state["student"])
    return report


def _bias(linear):
    return linear.bias if linear.bias is not None else 0.0


def _start(masks, kind, layer, weight, state, report):
    """The accumulator of this sublayer, or None (nothing kept, or tuning aborted) after recording why."""
    state["student"] = (masks.head, masks.ffn)
    cur = masks.head if kind == "heads" else masks.ffn
    kept = [int(j) for j in torch.nonzero(cur[layer]).flatten()]
    state["kept"] = kept
    if kept and not state["aborted"]:
        return _Normal(kind, weight, kept, masks.H, masks.d)
    report.append({"layer": layer, "sublayer": kind, "unknowns": len(kept),
                   "status": "aborted" if kept else "empty"})
    return None


def _finish(acc, masks, kind, layer, damp, limit, state, report) -> None:
    """Solve this sublayer's system and set its masks (or abort: this and later sublayers stay binary)."""
    if acc is None:
        return
    masks.set(*state["student"])
    cur, kept = (masks.head if kind == "heads" else masks.ffn), state["kept"]
    G, Aty, yty = acc.result()
    m0 = cur[layer, kept].double().to(G.device)
    m = m0 + solve(G, Aty - G @ m0, damp)
    before, after = ls_error(G, Aty, yty, m0), ls_error(G, Aty, yty, m)
    rec = {"layer": layer, "sublayer": kind, "unknowns": len(kept), "error_before": before, "error_after": after,
           "target_norm": yty, "relative_before": before / yty if yty else None,
           "relative_after": after / yty if yty else None}
    if not torch.isfinite(m).all() or float(m.abs().max()) > limit:
        log.warning("fisher: mask tuning stopped at layer %d %s (max |m| %.3g > %g): this and later "
                    "sublayers keep binary masks", layer, kind, float(m.abs().max()), limit)
        state["aborted"] = True
        report.append({**rec, "status": "aborted", "max_abs_mask": float(m.abs().max())})
        return
    new = cur.clone()
    new[layer, kept] = m.to(new.dtype).to(new.device)
    masks.set(new, masks.ffn) if kind == "heads" else masks.set(masks.head, new)
    state["student"] = (masks.head, masks.ffn)
    log.info("fisher: tuned layer %d %s (%d units): LS error %.4g -> %.4g", layer, kind, len(kept), before, after)
    report.append({**rec, "status": "tuned"})
