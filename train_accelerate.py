"""Train a CIFAR-10 CNN with Hugging Face Accelerate and explain it.

    accelerate launch --config_file accelerate_configs/cpu.yaml train_accelerate.py --help
    python train_accelerate.py ...            (one process)
    torchrun --nproc_per_node 2 train_accelerate.py ...

Everything lives in the lab2 package; this file only hands the flags over.
"""

from lab2.api import main

if __name__ == "__main__":
    main()
