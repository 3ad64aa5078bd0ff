"""The Fashion-MNIST study (SiT-S/2 vs ELIT-SiT-S/2 single budget vs multibudget), run by studies/fashion_mnist.py.

    options.py     FashionMnistStudyConfig, ClassifierConfig, PRESETS, the three MODELS and smoke sizes
    state.py       Study: one run's state, clocks, progress log, stage runner, incremental results.json
    data.py        idx files -> memory / device, the feature classifier, reference statistics, FD floor
    fastloop.py    ModelRun: the fast training loop (data on device, no per-step syncs, compile + warm-up)
    rows.py        the final configurations (rows) and how their numbers are written
    measure.py     sampling models (bf16 + CUDA graphs), samples, metrics, held-out loss, latency, FLOPs
    schedule.py    building the runs, the time plan, round-robin training with curve points, final rows
    claims.py      verdicts on claims (a), (b), (c) and their sentences
    figures.py     curves.png, quality_vs_gflops.png, grids.png
    report.py      the markdown report and the README's one-line verdicts
    study.py       run_study: the stages in order
    classifier.py  the feature classifier (network, training, TorchScript export), run by studies/classifier.py

Nothing is imported here, so that the options can be read without torch (config.py does).
"""
