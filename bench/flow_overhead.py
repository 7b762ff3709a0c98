"""Cost of gradient/weight/update flow collection at the default interval, measured in one run.

Times real SimpleCNN training steps (device pipeline batches, Adam) with and
without a flow snapshot on every step, then scales the per-snapshot cost to the
default --flow_log_steps: overhead = snapshot cost / (interval x step time).
The budget is 5%.

    python bench/flow_overhead.py [--steps 30] [--interval 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab2.device_data import DeviceLoader  # noqa: E402
from lab2.flow import FlowCollector  # noqa: E402
from lab2.models import SimpleCNN  # noqa: E402
from lab2.outputs import append_jsonl  # noqa: E402


def timed_steps(model, optimizer, batches, collector=None, jsonl=None) -> float:
    """Seconds per training step, with a full snapshot (read, copy, ratio, host copy, JSONL) on each when collector is given."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    sync()
    start = time.perf_counter()
    for step, (x, y) in enumerate(batches, 1):
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        if collector:
            collector.before_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if collector:
            append_jsonl(jsonl, collector.after_step(step).to_record())
    sync()
    return (time.perf_counter() - start) / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--interval", type=int, default=200)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.steps * 128, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.steps * 128,))
    batches = list(DeviceLoader(images, labels, 128, train=True, device=device, channels_last=True))
    model = SimpleCNN().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    timed_steps(model, optimizer, batches[:3])  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        plain = timed_steps(model, optimizer, batches)
        flow = timed_steps(model, optimizer, batches, FlowCollector(model), Path(tmp) / "flow.jsonl")
        plain_again = timed_steps(model, optimizer, batches)
    step = (plain + plain_again) / 2  # bracketing the flow run evens out drift on a noisy machine
    snapshot = max(flow - step, 0.0)
    overhead = snapshot / (args.interval * step)
    print(f"device {device}: step {1000 * step:.2f} ms, snapshot {1000 * snapshot:.2f} ms "
          f"(flow on every step: {flow / step:.3f}x a plain step)")
    print(f"overhead at --flow_log_steps {args.interval}: {100 * overhead:.3f}% (budget 5%)")


if __name__ == "__main__":
    main()
