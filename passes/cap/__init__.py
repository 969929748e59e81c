"""CAP, contrastive pruning (Xu et al., AAAI 2022, arXiv:2112.07198): the ``cap`` pass
(:mod:`passes.cap.cap`) and its helpers: sentence representations and memory banks
(:mod:`passes.cap.banks`), the contrastive objective (:mod:`passes.cap.contrastive`), the pruning
criteria and first-order importance (:mod:`passes.cap.prune`) and the weight and structured
training schedules (:mod:`passes.cap.training`)."""
