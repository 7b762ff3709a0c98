"""lab2: CIFAR-10 on Hugging Face Accelerate that trains a CNN and explains it."""

__version__ = "0.1.0"
