"""Two trainings side by side on one CPU: each with all the cores' threads, against each with its share.

Backs two choices: lab2 honours OMP_NUM_THREADS=1 under python and torchrun (two runs sharing a machine), and
`make test` gives each of its two workers, and every program a test starts, one thread (tests/conftest.py).
Each process runs the same SimpleCNN training steps (batch 128, Adam, fp32); both variants run in this one
invocation, and the ratio is printed.

    python bench/threads_side_by_side.py [--steps 12] [--processes 2]
    python bench/threads_side_by_side.py --tiny   # smoke check: one process, 1 step of batch 8
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

STEPS = """
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
from lab2.models import create_model
model = create_model("simple_cnn", 10)
optimizer = torch.optim.Adam(model.parameters())
x, y = torch.randn(int(sys.argv[3]), 3, 32, 32), torch.randint(0, 10, (int(sys.argv[3]),))
for _ in range(int(sys.argv[2])):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
"""


def side_by_side(processes: int, threads: int, steps: int, batch_size: int) -> float:
    """Seconds until all `processes` copies of the steps, started together, have finished."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, "-c", STEPS, str(threads), str(steps), str(batch_size)]
    start = time.perf_counter()
    running = [subprocess.Popen(command, env=env) for _ in range(processes)]
    if any(p.wait() for p in running):
        raise SystemExit("a training process failed")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--tiny", action="store_true", help="smoke check: one process, 1 step of batch 8")
    args = parser.parse_args()
    if args.tiny:
        args.steps, args.batch_size, args.processes = 1, 8, 1
    cores = len(os.sched_getaffinity(0))
    share = max(1, cores // args.processes)
    all_cores = side_by_side(args.processes, cores, args.steps, args.batch_size)
    shared = side_by_side(args.processes, share, args.steps, args.batch_size)
    print(f"{args.processes} processes x {args.steps} steps on {cores} cores")
    print(f"  {cores} threads each: {all_cores:.1f} s")
    print(f"  {share} thread(s) each: {shared:.1f} s")
    print(f"all cores each / a share each = {all_cores / shared:.2f}")


if __name__ == "__main__":
    main()
