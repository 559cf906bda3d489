"""Data: dataset readers, the embedding store, normalisation."""
