"""Data: the demo corpus, the joined face records, datasets and the deterministic loader."""
