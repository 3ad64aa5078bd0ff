"""Studies: experiments that run the repository's own tools end to end and publish what comes out.

    studies/classifier.py     a small Fashion-MNIST CNN, saved as an evaluator feature network (TorchScript)
    studies/fashion_mnist.py  SiT-S/2 vs multibudget ELIT-SiT-S/2 on Fashion-MNIST: data to report in one command
"""
