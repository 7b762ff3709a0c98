"""Which CPU path is fastest for SimpleCNN: fp32 vs channels_last vs bf16 autocast, interleaved in one run.

Backs two defaults: channels_last on the CPU, and fp32 (accelerate_configs/cpu.yaml)
on CPUs without AMX/AVX512-BF16, where bf16 autocast is emulated.

    python bench/cpu_precision.py [--steps 3] [--repeats 2]
    python bench/cpu_precision.py --tiny   # smoke check: 1 step of batch 8 per variant
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab2.engine.setup import cpu_has_fast_bf16  # noqa: E402
from lab2.models import SimpleCNN  # noqa: E402

VARIANTS = {
    "fp32, contiguous (the seed)": (False, False),
    "fp32, channels_last (lab2 default)": (True, False),
    "bf16 autocast, channels_last": (True, True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="smoke check: 1 step of batch 8, 1 repeat")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.repeats, args.batch_size = 1, 1, 8
    batch = args.batch_size
    torch.manual_seed(0)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    setups = {}
    for name, (channels_last, bf16) in VARIANTS.items():
        model = SimpleCNN().to(memory_format=torch.channels_last) if channels_last else SimpleCNN()
        inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        setups[name] = (model, torch.optim.Adam(model.parameters(), fused=True), inputs, bf16)
    times = {name: [] for name in setups}
    for _ in range(args.repeats):  # interleaved, so drift on a shared machine hits every variant alike
        for name, (model, optimizer, inputs, bf16) in setups.items():
            for step in range(args.steps + 1):
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = F.cross_entropy(model(inputs).float(), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if step:  # the first step of each round warms caches up
                    times[name].append(time.perf_counter() - start)
    baseline = statistics.median(times["fp32, contiguous (the seed)"])
    print(
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}, AMX/AVX512-BF16: {cpu_has_fast_bf16()}, "
        f"{torch.get_num_threads()} threads, batch {batch}"
    )
    for name, values in times.items():
        step = statistics.median(values)
        print(f"{name:<36} {step:7.3f} s/step  {batch / step:7.1f} images/s  {baseline / step:5.2f}x the seed's speed")


if __name__ == "__main__":
    main()
