"""Cost of gradient/weight/update flow collection at the default interval, measured in one run.

Times real SimpleCNN training steps (device pipeline batches, Adam) and, within
them, the flow snapshot alone (synchronised), then scales the snapshot's cost to
the default --flow_log_steps: overhead = snapshot / (interval x step), medians.
The budget is 5%.

    python bench/flow_overhead.py [--steps 30] [--interval 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab2.device_data import DeviceDataset, device_dataloader  # noqa: E402
from lab2.flow import FlowCollector  # noqa: E402
from lab2.models import SimpleCNN  # noqa: E402
from lab2.outputs import append_jsonl  # noqa: E402


def run_steps(model, optimizer, batches, collector=None, jsonl=None) -> tuple[list[float], list[float]]:
    """Per-step seconds, and per-step seconds spent in the flow snapshot itself (read, copy, ratio, host copy, JSONL)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    steps, snapshots = [], []
    for step, (x, y) in enumerate(batches, 1):
        sync()
        start = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        spent = 0.0
        if collector:
            sync()
            mark = time.perf_counter()
            collector.before_step()
            sync()
            spent += time.perf_counter() - mark
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if collector:
            sync()
            mark = time.perf_counter()
            append_jsonl(jsonl, collector.after_step(step).to_record())
            spent += time.perf_counter() - mark
        sync()
        steps.append(time.perf_counter() - start - spent)
        snapshots.append(spent)
    return steps, snapshots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--interval", type=int, default=200)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    images = torch.randint(0, 256, (args.steps * 128, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (args.steps * 128,))
    batches = list(device_dataloader(DeviceDataset(images, labels, train=True, device=device, channels_last=True), 128, shuffle=True))
    model = SimpleCNN().to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters())
    run_steps(model, optimizer, batches[:3], FlowCollector(model), Path(tempfile.gettempdir()) / "flow-warmup.jsonl")  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        steps, snapshots = run_steps(model, optimizer, batches, FlowCollector(model), Path(tmp) / "flow.jsonl")
    # Medians: robust to the other tenants of a noisy machine. The snapshot is timed on its own, synced.
    step, snapshot = statistics.median(steps), statistics.median(snapshots)
    overhead = snapshot / (args.interval * step)
    print(f"device {device}: training step {1000 * step:.2f} ms, flow snapshot {1000 * snapshot:.2f} ms "
          f"(a snapshot costs {snapshot / step:.3f} of a step)")
    print(f"overhead at --flow_log_steps {args.interval}: {100 * overhead:.3f}% (budget 5%)")


if __name__ == "__main__":
    main()
