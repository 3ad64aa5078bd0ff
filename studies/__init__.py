"""Studies: experiments that run the repository's own tools end to end and publish what comes out.

    studies/fashion_mnist.py  command: SiT-S/2 vs multibudget ELIT-SiT-S/2 on Fashion-MNIST, data to report
    studies/classifier.py     command: a small Fashion-MNIST CNN, saved as an evaluator feature network
    studies/fmnist/           the Fashion-MNIST study and its classifier (options + presets, stages, claims,
                              report; its __init__ lists the files)
"""
