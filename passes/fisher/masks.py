"""Head and neuron masks of an encoder as hooks (and a hidden-unit mask), their empirical Fisher, Kwon et al.'s
mask rearrangement, and folding real-valued masks into the weights before stripping.

Kwon, Kim, Mahoney, Hassoun, Keutzer, Gholami, "A Fast Post-Training Pruning Framework for
Transformers" (NeurIPS 2022, arXiv:2204.09656); section numbers are METHODS-structured.md's,
which reads the authors' code (WoosukKwon/retraining-free-pruning).
"""

from __future__ import annotations

from functools import partial

import torch

from compressor.errors import ModelError
from passes.families import family_of


class UnitMasks:
    """Head masks ``head [L, H]`` and neuron masks ``ffn [L, F]`` applied by forward pre-hooks
    (section 1.2): the input of each layer's ``attn_out`` projection is scaled per head slice
    ``[h d_h, (h+1) d_h)`` (``(m_h P_h) V_h = m_h (P_h V_h)``, so this equals HF's ``head_mask``
    without relying on it, which 5.x dropped), the input of ``ffn_out`` (the post-activation
    hidden units) per neuron. The hooks read ``self.head`` / ``self.ffn`` at call time: assign new
    tensors to change them (``requires_grad`` ones for mask gradients). ``family`` is the model's
    adapter (:func:`passes.families.family_of`)."""

    def __init__(self, model):
        self.family = fam = family_of(model)
        self.layers = fam.layers()
        sizes = {fam.layer_sizes(layer) for layer in self.layers}
        if len(sizes) != 1 or getattr(model.config, "compressor_layers", None):
            raise ModelError("fisher needs an unstripped model with the same heads and FFN width in every "
                             f"layer: got (heads, ffn) {sorted(sizes)}")
        (self.H, self.F), = sizes
        self.L = len(self.layers)
        self.d = int(fam.head_size(self.layers[0]))
        self.head, self.ffn = torch.ones(self.L, self.H), torch.ones(self.L, self.F)
        self.handles = []
        for i, layer in enumerate(self.layers):
            self.handles.append(fam.linear(layer, "attn_out").register_forward_pre_hook(partial(self._heads, i)))
            self.handles.append(fam.linear(layer, "ffn_out").register_forward_pre_hook(partial(self._neurons, i)))

    def _heads(self, i, module, args):
        x = args[0]
        m = self.head[i].to(x.dtype)
        return ((x.unflatten(-1, (self.H, self.d)) * m[:, None]).flatten(-2),) + tuple(args[1:])

    def _neurons(self, i, module, args):
        return (args[0] * self.ffn[i].to(args[0].dtype),) + tuple(args[1:])

    def set(self, head, ffn) -> None:
        self.head, self.ffn = head, ffn

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def task_loss(model, batch, device):
    """The batch-mean loss the masks' Fisher is taken of: ``outputs.loss`` with the true labels
    (HF's head: cross-entropy, MSE for one output, per token for a tagger, BCE for multi-label,
    start/end for QA), or for an embedding model :func:`compressor.embedder.fisher_loss`."""
    from compressor.embedder import fisher_loss, settings_of
    from compressor.evaluation import label_kwargs, model_inputs
    embedding = settings_of(model)  # an embedding model: the contrastive distillation loss
    inputs = {k: v.to(device) for k, v in model_inputs(batch).items()}
    out = model(**inputs, **label_kwargs(model, batch["labels"].to(device)))  # QA: start/end positions
    return fisher_loss(out.logits, batch["labels"].to(device), embedding) if embedding else out.loss


class HiddenMask:
    """A hidden-unit mask ``m [D]`` (CoFi's hidden mask: Xia, Zhong, Chen, "Structured Pruning
    Learns Compact and Accurate Models", ACL 2022, arXiv:2204.00408, Sec. 3.1; ZipLM's hidden
    dimension) multiplied into the hidden stream wherever it is produced: the output of each of
    the family's :meth:`~passes.families.base.Family.residual_outputs` (the embeddings, each
    post-norm block's LayerNorm or each pre-norm block's output, the pooler), by forward hooks.
    The hooks read ``self.m`` at call time: assign a ``requires_grad`` tensor for its gradient.
    Works on stripped models (uneven heads / FFN, stand-ins)."""

    def __init__(self, model):
        fam = family_of(model)
        self.D = int(fam.hidden_size())
        self.m = torch.ones(self.D)
        self.handles = [module.register_forward_hook(self._scale) for module in fam.residual_outputs()]

    def _scale(self, module, args, output):
        if isinstance(output, tuple):
            return (output[0] * self.m.to(output[0].dtype),) + tuple(output[1:])
        return output * self.m.to(output.dtype)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []


def hidden_gradients(model, mask: HiddenMask, loader) -> torch.Tensor:
    """Gradients ``[B, D]`` of the batch-mean task loss (:func:`task_loss`) w.r.t. the hidden mask
    at m = 1, one per mini-batch (as :func:`mask_gradients` for heads and neurons)."""
    device = next(model.parameters()).device
    grads = []
    for batch in loader:
        mask.m = torch.ones(mask.D, device=device, requires_grad=True)
        grads.append(torch.autograd.grad(task_loss(model, batch, device), mask.m)[0].detach().float().cpu())
    mask.m = torch.ones(mask.D, device=device)
    return torch.stack(grads)


def mask_gradients(model, masks: UnitMasks, loader) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the batch-mean task loss (``outputs.loss`` with the true labels; an embedding
    model's :func:`compressor.embedder.fisher_loss`) w.r.t. the
    masks at m = 1, one per mini-batch (section 1.3): ``G_head [B, L, H]``, ``G_ffn [B, L, F]``.
    The model's parameters must not require grad (only the masks get gradients)."""
    device = next(model.parameters()).device
    gh, gf = [], []
    for batch in loader:
        head = torch.ones(masks.L, masks.H, device=device, requires_grad=True)
        ffn = torch.ones(masks.L, masks.F, device=device, requires_grad=True)
        masks.set(head, ffn)
        g_head, g_ffn = torch.autograd.grad(task_loss(model, batch, device), (head, ffn))
        gh.append(g_head.detach().float().cpu())
        gf.append(g_ffn.detach().float().cpu())
    masks.set(torch.ones(masks.L, masks.H, device=device), torch.ones(masks.L, masks.F, device=device))
    return torch.stack(gh), torch.stack(gf)


def fisher(grads: torch.Tensor) -> torch.Tensor:
    """Diagonal empirical Fisher ``I_j = sum_b g_{b,j}^2`` (section 1.3) of ``[B, ...]`` gradients."""
    return (grads.double() ** 2).sum(0)


def rearrange(keep: torch.Tensor, grads: torch.Tensor, importance: torch.Tensor) -> torch.Tensor:
    """Kwon's greedy mask rearrangement of one layer (section 1.5): keep the number pruned, and
    lower ``||sum_{j in P} g_j||^2`` (the block-diagonal Fisher's estimate of the loss increase
    of pruning set P). ``keep`` [n] bool, ``grads`` [B, n], ``importance`` [n]. Start from the
    |P| least important units; for each other unit u in increasing importance, add u to P and
    drop the r in P (u included) whose removal leaves the smallest objective."""
    n, p = keep.numel(), int((~keep).sum())
    if p in (0, n):
        return keep.clone()
    g = grads.double()
    order = torch.argsort(importance.double(), stable=True).tolist()
    pruned = order[:p]
    total = g[:, pruned].sum(1)
    for u in order[p:]:
        cand = pruned + [u]
        with_u = total + g[:, u]
        obj = ((with_u[:, None] - g[:, cand]) ** 2).sum(0)
        r = int(torch.argmin(obj))
        total = with_u - g[:, cand[r]]
        pruned = cand[:r] + cand[r + 1:]
    out = torch.ones(n, dtype=torch.bool)
    out[pruned] = False
    return out


def pruned_objective(keep: torch.Tensor, grads: torch.Tensor) -> float:
    """``||sum_{j pruned} g_j||^2`` of one layer (the quantity :func:`rearrange` lowers)."""
    return float((grads.double()[:, ~keep].sum(1) ** 2).sum())


def fold_and_strip(model, head: torch.Tensor, ffn: torch.Tensor) -> list[dict]:
    """Fold real-valued masks into the weights (``m_h`` into the attention-output columns of head
    h, ``m_i`` into FFN-output column i; biases unchanged) and slice away every unit whose mask is
    0 (a layer may keep 0 heads or 0 neurons: its bias and residual stay). The function is that of
    the masked model (the mask zeroes the whole unit, its value bias included, so nothing is
    folded into biases). Sets ``config.compressor_layers``; returns those sizes."""
    from passes.strip import layer_sizes
    fam = family_of(model)
    with torch.no_grad():
        for i, layer in enumerate(fam.layers()):
            d = int(fam.head_size(layer))
            ao, fc2 = fam.linear(layer, "attn_out"), fam.linear(layer, "ffn_out")
            ao.weight.mul_(head[i].to(ao.weight).repeat_interleave(d)[None, :])
            fc2.weight.mul_(ffn[i].to(fc2.weight)[None, :])
            keep_h = [h for h in range(head.shape[1]) if float(head[i, h]) != 0.0]
            keep_f = [j for j in range(ffn.shape[1]) if float(ffn[i, j]) != 0.0]
            if len(keep_h) < head.shape[1]:
                fam.keep_heads(layer, keep_h)
            if len(keep_f) < ffn.shape[1]:
                fam.keep_ffn(layer, keep_f)
    sizes = layer_sizes(model)
    model.config.compressor_layers = sizes
    return sizes
