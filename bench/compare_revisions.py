"""lab2's training throughput at two git revisions, measured interleaved in one run.

Each revision is checked out into a temporary worktree and trained with the
same command (`accelerate launch` on the CPU config, default flags, no tracker,
no checkpoints); the runs alternate A, B, A, B, ... so a noisy machine slows
both alike. It prints each run's training images/s (summary.json, evaluation
excluded), the median per revision, and the ratio B / A.

    python bench/compare_revisions.py 5f85827 HEAD              # before / after a change
    python bench/compare_revisions.py 5f85827 HEAD --rounds 3 --epochs 2
    python bench/compare_revisions.py HEAD HEAD --quick   # smoke check: 1 round of 1 epoch of 128 images
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "cifar10-mini"


def checkout(revision: str, into: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(into), revision], check=True)
    return into


def train_rate(tree: Path, data_dir: Path, epochs: int, out: Path, extra: list[str]) -> float:
    """Training images/s of one lab2 run from the source tree `tree` (its own train_accelerate.py and lab2/)."""
    command = [
        str(Path(sys.executable).parent / "accelerate"),
        "launch",
        "--quiet",
        "--config_file",
        "accelerate_configs/cpu.yaml",
        "train_accelerate.py",
        "--data_dir",
        str(data_dir),
        "--num_train_epochs",
        str(epochs),
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--checkpointing_steps",
        "none",
        *extra,
    ]
    # PYTHONPATH: the tree's own lab2 wins over the editable install of this checkout.
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(tree))
    done = subprocess.run(command, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"run in {tree} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return json.loads((out / "summary.json").read_text())["train_images_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--data_dir", type=Path, default=MINI)
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 round of 1 epoch of 128 images")
    args = parser.parse_args()
    extra = []
    if args.quick:
        args.rounds, args.epochs = 1, 1
        extra = ["--max_train_samples", "128", "--max_eval_samples", "64", "--flow_log_steps", "0"]
    with tempfile.TemporaryDirectory() as tmp:
        trees = {
            name: checkout(rev, Path(tmp) / name) for name, rev in (("before", args.before), ("after", args.after))
        }
        rates: dict[str, list[float]] = {"before": [], "after": []}
        try:
            for round_ in range(args.rounds):
                for name, tree in trees.items():
                    rate = train_rate(tree, args.data_dir, args.epochs, Path(tmp) / f"run-{name}-{round_}", extra)
                    rates[name].append(rate)
                    print(f"round {round_ + 1} {name:>6} ({getattr(args, name)}): {rate:.1f} images/s", flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=False)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    print(
        f"median before {medians['before']:.1f}, after {medians['after']:.1f} images/s; "
        f"after / before = {medians['after'] / medians['before']:.3f}"
    )


if __name__ == "__main__":
    main()
