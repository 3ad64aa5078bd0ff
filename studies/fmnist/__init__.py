"""The Fashion-MNIST study (SiT-S/2 vs multibudget ELIT-SiT-S/2), run by studies/fashion_mnist.py.

    options.py     FashionMnistStudyConfig, ClassifierConfig and the study's PRESETS, models and smoke sizes
    rows.py        the configurations compared (rows) and how their numbers are written
    tools.py       the one door to generate.py / elit_multibudget_inference.py / dataset_tools.py
    state.py       Study: one run's state, progress log and stage runner
    costs.py       FLOP tables, training/sampling FLOPs, the time guard (step cap, sample count)
    stages.py      data, classifier, training, loading + held-out loss, sampling, latency, metrics
    claims.py      verdicts on claims (a), (b), (c) and their sentences
    report.py      figures, report.md, study.log
    study.py       run_study: the stages in order
    classifier.py  the feature classifier (network, training, TorchScript export), run by studies/classifier.py

Nothing is imported here, so that the options can be read without torch (config.py does).
"""
