"""``fisher``: Kwon et al.'s retraining-free structured pruning and the structure search it shares.

- :mod:`passes.fisher.prune`: the pass (:class:`passes.fisher.prune.Fisher`);
- :mod:`passes.fisher.masks`: head / neuron masks as hooks, their Fisher, rearrangement, folding;
- :mod:`passes.fisher.tune`: mask tuning by layer-wise least squares;
- :mod:`passes.fisher.search`: which units each layer keeps under a cost budget;
- :mod:`passes.fisher.cost`: the cost-model interface and the FLOP model;
- :mod:`passes.fisher.latency_table`: the latency table measured on a target, and whole-structure checks.
"""
