"""RPP, Reweighted Proximal Pruning: the pass (:mod:`passes.rpp.rpp`), its proximal operators
(:mod:`passes.rpp.proximal`) and its structured hard cut (:mod:`passes.rpp.cut`)."""
