"""CIFAR-10 into uint8 tensors: the safe batch-file reader, the seed's Dataset and transforms, the
device-resident Dataset, the Hugging Face datasets source, and the pipeline's loaders.
"""
