"""``vocab-prune``: the pass (:mod:`.prune`), its tokenizer rewriting (:mod:`.tokenizer`) and its
embedding rows (:mod:`.embeddings`)."""
