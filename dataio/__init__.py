"""Datasets: on-disk format, loading and batching, the pixel/latent codec, the VAE, and the dataset sources.

    format.py    dataset.json (read_meta), the array files of each kind, atomic resumable writing
    dataset.py   ArrayDataset / load_dataset (training items), SourceImages (the images behind latents)
    loader.py    StepBatchSampler, StepLoader, make_loader: one resumable index stream for any process count
    codec.py     Codec: encode for training, decode to uint8 for outputs; sd_vae_record (converted checkpoints)
    vae.py       load_vae, encode_images, decode: the AutoencoderKL, floats only
    writers.py   write_pixel_dataset, save_png, save_grid
    options.py   the schemas of the dataset_tools.py subcommands
    sources/     demo, fashion_mnist, imagenet (`convert`), encode: one module per subcommand

Only codec.py knows whether a model sees pixels or latents. Importing this package imports nothing else.
"""
