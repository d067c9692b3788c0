"""The language side of brainjax: the embedded default LM (offline corpus, tokenizer, training, cache) and the
fMRI-LM text pipeline built on it."""
