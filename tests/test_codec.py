"""The pixel/latent codec: pixel round trip, latent decoding as the old path did it, the SD-VAE record, errors."""

import numpy as np
import pytest
import torch

from dataio.codec import (SD_VAE_CHANNELS, SD_VAE_FACTOR, Codec, checkpoint_record, pixels_to_uint8,
                          sd_vae_record)
from dataio.dataset import load_dataset
from dataio.options import DemoConfig
from dataio.sources.demo import demo
from dataio.vae import latent_norm, load_vae
from utils.errors import UserError

SCALE, SHIFT = 0.5, 0.1


def save_tiny_vae(path, **config) -> str:
    """A 2-level AutoencoderKL (image side / latent side = 2) with 4 latent channels, saved at `path`."""
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1,
                  latent_channels=4, norm_num_groups=8, sample_size=16, **config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def vae_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    return dict(shifted=save_tiny_vae(root / "shifted", scaling_factor=SCALE, shift_factor=SHIFT),
                plain=save_tiny_vae(root / "plain"))                    # diffusers' defaults: 0.18215, no shift


def latent_record(vae_dir, side=8):
    return dict(kind="latents", count=5, num_classes=3, class_names=["a", "b", "c"], latent_shape=[4, side, side],
                image_resolution=[2 * side, 2 * side], latent_scale=SCALE, latent_shift=SHIFT, vae=vae_dir)


def old_to_uint8(x, scale, shift, vae, batch_size):
    """The decoding of images.to_uint8 before the codec, written out: VAE per batch, round, clamp, NHWC."""
    out = []
    for s in range(0, len(x), batch_size):
        with torch.no_grad():
            img = vae.decode(x[s:s + batch_size].float() / scale + shift).sample.float()
        out.append(((img + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous())
    return torch.cat(out)


def test_pixel_round_trip(tmp_path):
    demo(DemoConfig(dest=str(tmp_path / "d"), num_images=12, resolution=8, seed=3))
    ds = load_dataset(str(tmp_path / "d"))
    codec = Codec.from_record(ds.meta)
    assert codec.kind == "pixels" and codec.vae_source is None and codec.load_vae() is None
    batch = torch.utils.data.default_collate(ds.__getitems__(list(range(12))))
    x = codec.encode(batch, codec.encode_noise(batch["x"].shape))
    assert x.shape == (12, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert torch.equal(codec.decode(x), torch.from_numpy(np.load(tmp_path / "d" / "images.npy")))
    assert torch.equal(codec.source_images(batch), batch["x"])
    assert codec.model_settings() == dict(input_size=8, in_channels=3, num_classes=ds.meta["num_classes"])
    assert codec.model_input_size(8) == 8 and codec.image_resolution == 8
    # Grey images come back as RGB, each channel the grey value.
    grey = torch.randint(0, 256, (2, 5, 5, 1), dtype=torch.uint8)
    out = pixels_to_uint8(grey.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert out.shape == (2, 5, 5, 3) and all(torch.equal(out[..., c], grey[..., 0]) for c in range(3))


def test_latent_decode_equals_the_old_path(vae_dirs):
    vae = load_vae(vae_dirs["shifted"])
    codec = Codec.from_record(latent_record(vae_dirs["shifted"]))
    assert codec.kind == "latents" and codec.vae_source == vae_dirs["shifted"]
    x = torch.randn(5, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    out = codec.decode(x, batch_size=2)
    assert out.shape == (5, 16, 16, 3) and out.dtype == torch.uint8
    assert torch.equal(out, old_to_uint8(x, SCALE, SHIFT, vae, 2))
    # A VAE given loaded decodes the same; --vae (an override) replaces the record's VAE, not its constants.
    assert torch.equal(Codec.from_record(latent_record(vae_dirs["shifted"]), vae=vae).decode(x, 2), out)
    other = Codec.from_record(latent_record(vae_dirs["shifted"]), vae=vae_dirs["plain"])
    assert other.vae_source == vae_dirs["plain"] and other.norm() == (SCALE, SHIFT)
    assert torch.equal(other.decode(x, 5), old_to_uint8(x, SCALE, SHIFT, load_vae(vae_dirs["plain"]), 5))


def test_latent_encode_samples_the_posterior(vae_dirs):
    codec = Codec.from_record(latent_record(vae_dirs["shifted"]))
    g = torch.Generator().manual_seed(0)
    batch = dict(x=torch.randn(3, 4, 8, 8, generator=g), std=torch.rand(3, 4, 8, 8, generator=g))
    noise = codec.encode_noise((3, 4, 8, 8), torch.Generator().manual_seed(5))
    assert torch.equal(noise, torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(5)))
    assert torch.allclose(codec.encode(batch), (batch["x"] - SHIFT) * SCALE)
    assert torch.allclose(codec.encode(batch, noise), (batch["x"] + batch["std"] * noise - SHIFT) * SCALE)
    assert codec.model_settings() == dict(input_size=8, in_channels=4, num_classes=3)
    assert codec.model_input_size(16) == 8 and codec.image_resolution == 16    # this VAE's factor is 2
    codec.check_fits(8, 4, "SiT-S/2")
    with pytest.raises(UserError) as e:
        codec.check_fits(4, 4, "SiT-S/2")
    assert str(e.value) == "latents are 8x8x4 (of 16x16 images) but SiT-S/2 at this config expects 4x4x4"
    assert codec.output_settings() == dict(output="latents", latent_scale=SCALE, latent_shift=SHIFT)


@pytest.mark.parametrize("name", ["plain", "shifted"])
def test_sd_vae_record_normalises_with_the_vae_config(vae_dirs, name):
    record = sd_vae_record(256)
    assert record["latent_shape"] == [SD_VAE_CHANNELS, 256 // SD_VAE_FACTOR, 256 // SD_VAE_FACTOR]
    assert record["image_resolution"] == [256, 256] and record["num_classes"] == 1000
    assert sd_vae_record(latent_size=32) == record
    codec = Codec.from_record(record)
    assert codec.model_settings() == dict(input_size=32, in_channels=4, num_classes=1000)
    assert codec.model_input_size(512) == 64 and codec.image_resolution == 256
    assert codec.vae_source == "stabilityai/sd-vae-ft-ema"
    assert codec.output_settings() == dict(output="latents", latent_scale=None, latent_shift=None)
    # The scale and shift are those of the VAE that decodes: its config's.
    vae = load_vae(vae_dirs[name])
    config = (vae.config.scaling_factor, vae.config.shift_factor or 0.0)
    decoding = Codec.from_record(sd_vae_record(latent_size=8), vae=vae_dirs[name])
    assert decoding.norm() == latent_norm(vae) == config
    x = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(decoding.decode(x, 3), old_to_uint8(x, *config, vae, 3))


def test_checkpoint_record_of_a_converted_checkpoint():
    model = type("Model", (), dict(input_size=32, num_classes=1000))()
    assert checkpoint_record(None, model) == sd_vae_record(256)
    stored = dict(kind="pixels", resolution=[8, 8], channels=3, num_classes=10)
    assert checkpoint_record(stored, model) is stored
    with pytest.raises(UserError, match="multiple of 8"):
        sd_vae_record(100)


def test_unknown_kinds_and_misfits_are_clear_errors(vae_dirs):
    with pytest.raises(UserError, match="unknown dataset kind 'voxels' .expected one of latents, pixels"):
        Codec.from_record(dict(kind="voxels", num_classes=1))
    with pytest.raises(UserError, match="encode them first"):
        Codec.from_record(dict(kind="images", num_classes=1, resolution=[8, 8]))
    with pytest.raises(UserError, match="not a dataset description"):
        Codec.from_record(None)
    with pytest.raises(UserError, match="square inputs"):
        Codec.from_record(dict(kind="pixels", resolution=[8, 16], channels=3, num_classes=2)).model_settings()
    wrong = dict(latent_record(vae_dirs["shifted"]), latent_shape=[3, 8, 8])
    with pytest.raises(UserError, match="has 4 latent channels but the model has 3"):
        Codec.from_record(wrong).load_vae()
