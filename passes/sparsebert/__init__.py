"""SparseBERT, knowledge-aware pruning (Xu et al., NAACL 2021, arXiv:2104.08682): the
``sparsebert`` pass (:mod:`passes.sparsebert.sparsebert`) and its training hooks, the mask
schedule and the distillation loss (:mod:`passes.sparsebert.training`)."""
