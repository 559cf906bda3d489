"""Decoders from embeddings back to a modality: images (conditional VAE) and captions."""
