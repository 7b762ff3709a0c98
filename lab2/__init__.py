"""lab2: CIFAR-10 on Hugging Face Accelerate that trains a CNN and explains it.

`lab2.train(**flags)` runs a training from Python (see lab2.api); it is loaded on first use, so
`import lab2` does not import torch.
"""

__version__ = "0.1.0"
__all__ = ["train", "TrainingDiverged"]


def __getattr__(name: str):
    # PEP 562: the API module (and through it the config) loads only when asked for.
    if name in __all__:
        from lab2 import api

        return getattr(api, name)
    raise AttributeError(f"module 'lab2' has no attribute {name!r}")
