"""Datasets: on-disk format, loading and batching, the pixel/latent codec, the VAE, and the dataset sources."""
