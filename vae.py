"""Temporary shim (floor-plan renovation): the VAE lives in dataio/vae.py (floats only), uint8 decoding in
dataio/codec.py. Writes to this module (tests monkeypatching `vae.encode_images`) reach dataio.vae."""
from dataio import vae as _vae_io
from dataio._shims import forward_writes
from dataio.codec import decode_latents  # noqa: F401
from dataio.vae import DEFAULT_VAE, encode_images, latent_norm, load_vae  # noqa: F401

forward_writes(__name__, _vae_io)
