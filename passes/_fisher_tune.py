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
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


class _Stop(Exception):
    """Raised by a capture hook to end a forward pass early."""


def _capture(model, masks, batch, module, device):
    """Run ``model`` on ``batch`` with ``masks`` as they are until ``module`` (a BertSelfOutput /
    BertOutput) is called; return its ``(hidden_states, input_tensor)`` and its dense's output."""
    from passes._train import model_inputs
    got = {}

    def pre(mod, args, kwargs):
        vals = list(args) + [kwargs[k] for k in ("hidden_states", "input_tensor") if k in kwargs]
        got["x"], got["res"] = vals[0], vals[1]
        got["out"] = mod.dense(vals[0])  # through the mask hook on dense
        raise _Stop
    handle = module.register_forward_pre_hook(pre, with_kwargs=True)
    try:
        model(**{k: v.to(device) for k, v in model_inputs(batch).items()})
    except _Stop:
        pass
    finally:
        handle.remove()
    return got["x"], got["res"], got["out"]


def _tokens(batch, cls_only: bool, device):
    mask = batch["attention_mask"].to(device).bool()
    if cls_only:
        mask = torch.zeros_like(mask)
        mask[:, 0] = True
    return mask


def _system(model, masks, loader, layer: int, kind: str, kept, teacher, cls_only: bool):
    """Accumulate ``G``, ``A^T y`` and ``y^T y`` of one sublayer over ``loader`` (float64)."""
    device = next(model.parameters()).device
    lay = masks.layers[layer]
    module = lay.attention.output if kind == "heads" else lay.output
    weight = module.dense.weight.detach().double()  # [d, in]
    bias = module.dense.bias.detach().double() if module.dense.bias is not None else 0.0
    student = (masks.head, masks.ffn)
    n, d = len(kept), masks.d
    G = torch.zeros(n, n, dtype=torch.float64, device=device)
    Aty = torch.zeros(n, dtype=torch.float64, device=device)
    yty, hh = 0.0, torch.zeros(n, n, dtype=torch.float64, device=device)
    idx = torch.tensor(kept, dtype=torch.long, device=device)
    with torch.no_grad():
        for batch in loader:
            sel = _tokens(batch, cls_only, device)
            masks.set(*teacher)
            _, res_t, out_t = _capture(model, masks, batch, module, device)
            masks.set(*student)
            x_s, res_s, _ = _capture(model, masks, batch, module, device)
            y = (out_t.double() + res_t.double() - bias - res_s.double())[sel]  # [N, d_model]
            x = x_s.double()[sel]
            yty += float((y * y).sum())
            if kind == "heads":
                ctx = x.unflatten(-1, (masks.H, d))[:, idx]  # [N, n, d_h]
                w = weight.unflatten(-1, (masks.H, d))[:, idx]  # [d_model, n, d_h]
                a = torch.einsum("tkj,ikj->tki", ctx, w)  # [N, n, d_model]
                G += torch.einsum("tki,tli->kl", a, a)
                Aty += torch.einsum("tki,ti->k", a, y)
            else:
                h = x[:, idx]  # [N, n]
                hh += h.T @ h
                Aty += (h * (y @ weight[:, idx])).sum(0)
    masks.set(*student)
    if kind == "ffn":
        w = weight[:, idx]
        G = (w.T @ w) * hh
    return G, Aty, yty


def solve(G: torch.Tensor, rhs: torch.Tensor, damp: float = 1.0) -> torch.Tensor:
    """``(G^2 + damp^2 I)^{-1} G rhs`` for symmetric ``G``: the damped least-squares solution of
    ``G delta = rhs`` (LSMR's answer), computed by a QR least-squares solve of the stacked system."""
    n = G.shape[0]
    stacked = torch.cat([G, damp * torch.eye(n, dtype=G.dtype, device=G.device)])
    target = torch.cat([rhs, torch.zeros(n, dtype=G.dtype, device=G.device)])
    return torch.linalg.lstsq(stacked.cpu(), target.cpu()[:, None], driver="gelsd").solution[:, 0].to(G.device)


def ls_error(G, Aty, yty, m) -> float:
    """``||A m - y||^2`` from the accumulated system."""
    return float(m @ G @ m - 2 * m @ Aty + yty)


def tune_masks(model, masks, loader, teacher, damp: float = 1.0, limit: float = 10.0,
               cls_last: bool = True) -> list[dict]:
    """Tune ``masks.head`` / ``masks.ffn`` (binary on entry, the student's) in place, layer by
    layer, against the ``teacher = (head, ffn)`` masks (module doc). Returns one record per
    sublayer: unknowns, LS error before / after (and relative to ``||y||^2``), status."""
    report, aborted = [], False
    for layer in range(masks.L):
        cls_only = cls_last and layer == masks.L - 1
        for kind in ("heads", "ffn"):
            cur = masks.head if kind == "heads" else masks.ffn
            kept = [int(j) for j in torch.nonzero(cur[layer]).flatten()]
            rec = {"layer": layer, "sublayer": kind, "unknowns": len(kept)}
            if not kept or aborted:
                report.append({**rec, "status": "aborted" if aborted and kept else "empty"})
                continue
            G, Aty, yty = _system(model, masks, loader, layer, kind, kept, teacher, cls_only)
            m0 = cur[layer, kept].double().to(G.device)
            m = m0 + solve(G, Aty - G @ m0, damp)
            before, after = ls_error(G, Aty, yty, m0), ls_error(G, Aty, yty, m)
            rec.update(error_before=before, error_after=after, target_norm=yty,
                       relative_before=before / yty if yty else None, relative_after=after / yty if yty else None)
            if not torch.isfinite(m).all() or float(m.abs().max()) > limit:
                aborted = True
                report.append({**rec, "status": "aborted", "max_abs_mask": float(m.abs().max())})
                log.warning("fisher: mask tuning stopped at layer %d %s (max |m| %.3g > %g): this and later "
                            "sublayers keep binary masks", layer, kind, float(m.abs().max()), limit)
                continue
            new = cur.clone()
            new[layer, kept] = m.to(new.dtype).to(new.device)
            masks.set(new, masks.ffn) if kind == "heads" else masks.set(masks.head, new)
            report.append({**rec, "status": "tuned"})
            log.info("fisher: tuned layer %d %s (%d units): LS error %.4g -> %.4g", layer, kind, len(kept),
                     before, after)
    return report
