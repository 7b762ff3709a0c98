"""CIFAR-10 as uint8 tensors: the safe batch-file reader, the sources, the Datasets and the pipeline's loaders."""
