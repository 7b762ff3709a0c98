"""Training-loop time lost to flow statistics + histograms + images together, at the default interval.

Real SimpleCNN steps (device-pipeline batches, Adam) through lab2's FlowReporter
with a real tracker (W&B offline, as a default run has): statistics and
histograms on the training thread, images rendered by the figure worker and
logged when ready. Two measurements, both medians over alternating blocks:

- A/B: blocks of --block steps without any flow, against blocks of the same
  steps with one snapshot at their start (its images render and are logged
  while the block's later steps run, so the worker's competition for the cores
  is inside the timing). Lost per snapshot = with - without; overhead at the
  default interval = lost / (interval x step). Budget: 2%.
- The training thread's own time per snapshot (before_step + after_step +
  the poll that logs its images, synchronised): it must stay <= 10 ms, so that
  a 1 ms GPU step loses at most 5% at --flow_log_steps 200. It is printed in
  parts (statistics and histograms, finishing and logging the snapshot,
  logging its images, idle polls). On a CPU the first part is the CPU reading
  all 4.4M parameters and gradients; on a GPU it is a few hundred kernel
  launches and the one host copy.

    python bench/flow_overhead.py [--rounds 5] [--block 10] [--interval 200] [--report_to wandb]
    python bench/flow_overhead.py --tiny   # smoke check: 1 round of 2 steps of batch 16, no tracker
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab2.config import parse_report_to  # noqa: E402
from lab2.data.device_dataset import DeviceDataset, device_dataloader  # noqa: E402
from lab2.explain.flow import FlowReporter  # noqa: E402
from lab2.models import SimpleCNN  # noqa: E402
from lab2.tracking.startup import tracker_init_kwargs  # noqa: E402
from lab2.tracking.trackers import Tracking  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class Bench:
    """Runs blocks of training steps and times, on the training thread, each part of the flow work."""

    PARTS = (
        "statistics + histograms (before_step)",
        "snapshot finish + file + scalars + histograms logged (after_step)",
        "image logging (polls that logged a snapshot's images)",
        "idle polls",
    )

    def __init__(self, batches, reporter: FlowReporter):
        self.batches, self.reporter = batches, reporter
        self.step = 0
        self.thread_times: list[float] = []  # the training thread's own time per snapshot
        self.parts: dict[str, list[float]] = {part: [] for part in self.PARTS}
        self.images_logged = 0
        log_flow_images = reporter.tracking.log_flow_images

        def counted(*args, **kwargs):  # to tell polls that logged images from idle ones
            self.images_logged += 1
            return log_flow_images(*args, **kwargs)

        reporter.tracking.log_flow_images = counted

    def _timed(self, part: str, call) -> float:
        sync()
        mark = time.perf_counter()
        call()
        sync()
        spent = time.perf_counter() - mark
        self.parts[part].append(spent)
        return spent

    def run_block(self, model, optimizer, steps: int, snapshot: bool) -> float:
        """Seconds for `steps` training steps; with `snapshot`, the first step takes a flow snapshot."""
        sync()
        start = time.perf_counter()
        spent = 0.0
        for i in range(steps):
            x, y = self.batches[self.step % len(self.batches)]
            self.step += 1
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            take = snapshot and i == 0
            if take:
                spent += self._timed(self.PARTS[0], self.reporter.before_step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if take:
                spent += self._timed(self.PARTS[1], lambda: self.reporter.after_step(self.step))
            if snapshot:  # polling (and logging finished images) is part of the cost
                before = self.images_logged
                sync()
                mark = time.perf_counter()
                self.reporter.poll(self.step)
                sync()
                polled = time.perf_counter() - mark
                self.parts[self.PARTS[2] if self.images_logged > before else self.PARTS[3]].append(polled)
                spent += polled
        sync()
        if snapshot:
            self.thread_times.append(spent)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="A/B pairs of blocks")
    parser.add_argument(
        "--block", type=int, default=10, help="steps per block (long enough for a snapshot's images to render)"
    )
    parser.add_argument("--interval", type=int, default=200, help="--flow_log_steps to scale to (the default)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--report_to", default="wandb")
    parser.add_argument("--tiny", action="store_true", help="smoke check: 1 round of 2 steps, batch 16, no tracker")
    args = parser.parse_args()
    if args.tiny:
        args.rounds, args.block, args.batch_size, args.report_to = 1, 2, 16, "none"
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        accelerator = Accelerator(
            log_with=parse_report_to(args.report_to) or None,
            project_config=ProjectConfiguration(project_dir=tmp, logging_dir=str(out / "tensorboard")),
        )
        device = accelerator.device
        torch.manual_seed(0)
        count = 8 * args.batch_size
        images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8)
        labels = torch.randint(0, 10, (count,))
        batches = list(
            device_dataloader(
                DeviceDataset(images, labels, train=True, device=device, channels_last=True),
                args.batch_size,
                shuffle=True,
            )
        )
        model = SimpleCNN().to(device).to(memory_format=torch.channels_last)
        optimizer = torch.optim.Adam(model.parameters(), fused=device.type in ("cpu", "cuda"))
        tracking = Tracking(accelerator)
        init_kwargs, _ = tracker_init_kwargs(args.report_to, out, "flow-overhead", resume=False)
        tracking.start("lab2-bench", {}, init_kwargs, run_folder=out)
        reporter = FlowReporter(model, tracking, out / "flow.jsonl")
        bench = Bench(batches, reporter)
        bench.run_block(model, optimizer, args.block, snapshot=True)  # warm-up: kernels, the worker thread, W&B media
        reporter.close(bench.step)
        bench.thread_times.clear()
        bench.parts = {part: [] for part in Bench.PARTS}
        plain, flowed = [], []
        for _ in range(args.rounds):
            plain.append(bench.run_block(model, optimizer, args.block, snapshot=False))
            flowed.append(bench.run_block(model, optimizer, args.block, snapshot=True))
        reporter.close(bench.step)
        tracking.finish()
    step = statistics.median(plain) / args.block
    lost = max(0.0, statistics.median(flowed) - statistics.median(plain))
    thread = statistics.median(bench.thread_times)
    print(f"device {device}, batch {args.batch_size}, trackers {args.report_to}: training step {1000 * step:.1f} ms")
    print(
        f"per snapshot: {1000 * lost:.1f} ms of training time lost (A/B, statistics + histograms + images, "
        f"{args.rounds} rounds of {args.block} steps), of which the training thread itself spent "
        f"{1000 * thread:.1f} ms (budget 10 ms)"
    )
    for part, times in bench.parts.items():
        if times:
            print(f"  {part}: median {1000 * statistics.median(times):.2f} ms x {len(times)}")
    print(
        f"overhead at --flow_log_steps {args.interval}: {100 * lost / (args.interval * step):.3f}% of training time "
        "(budget 2%)"
    )
    if device.type == "cuda":
        print(
            f"for a 1 ms step at --flow_log_steps {args.interval}: the training thread's share is "
            f"{100 * thread / (args.interval * 1e-3):.1f}%"
        )
    else:
        print(
            "(on a CPU the statistics and histograms are the CPU reading every parameter and gradient; "
            "run this on a GPU for the training thread's time against a 1 ms step)"
        )


if __name__ == "__main__":
    main()
