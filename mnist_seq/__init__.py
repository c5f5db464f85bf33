"""mnist-seq: train, evaluate and understand MNIST classifiers with Keras."""

__version__ = "0.1.0"
