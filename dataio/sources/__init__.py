"""Where datasets come from: demo shapes, Fashion-MNIST, image folders (ImageNet), VAE encoding."""
