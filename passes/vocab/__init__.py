"""``vocab-prune``: the pass (:mod:`.prune`), its tokenizer rewriting (:mod:`.tokenizer`, with the
BPE and Unigram specifics in :mod:`.bpe` and :mod:`.unigram`), the old/new split comparisons
(:mod:`.compare`) and its embedding rows (:mod:`.embeddings`)."""
