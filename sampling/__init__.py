"""Sampling as a library, beneath generate.py and elit_multibudget_inference.py.

    options.py      the schemas (GenerateConfig, InferenceConfig)
    plan.py         SamplingPlan / GenerationPlan: typed, frozen; folder names, resume settings, evaluations
    load.py         checkpoint -> model + identity; Decoder (samples -> uint8 through the checkpoint record's dataio codec)
    run.py          per-image seeded inputs, the generate_images iterator, generate.py's resumable driver
    shards.py       batches, PNG / .npy shards, the streamed .npz
    distributed.py  torchrun environment, process group, barriers
    cost.py         GFLOPs per step / sample, timing of device work
    multibudget.py  one ELIT model at every budget and guidance mode
"""
