"""Time to accuracy: how much sooner `--recipe fast` reaches the seed recipe's final accuracy.

One invocation, two lab2 runs on the mini slice, one after the other:
1. the seed recipe (lab2's defaults: Adam 1e-3, batch 128, constant rate) for 30
   epochs; its final eval accuracy is A;
2. `--recipe fast` as configured (its one-cycle schedule's length is part of the
   recipe), evaluated every epoch like the seed.
It prints the epoch and the wall time at which the fast run first reaches A, and
the wall-time ratio seed / fast (target >= 2x, stretch 3x). Wall time is measured
from the start of the process to the line each epoch prints after its evaluation,
so start-up, training and evaluation (twice the forward passes with --tta) all count.
Both runs use --report_to none and no checkpoints. The result is appended to
bench/RESULTS.md.

    python bench/time_to_accuracy.py            # the measurement (about 40 minutes on 2 CPU cores)
    python bench/time_to_accuracy.py --quick    # smoke check: 128 images, 1 epoch each; no RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "cifar10-mini"
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+): train loss")  # the line printed after each epoch's evaluation


def timed_run(name: str, flags: list[str], out: Path) -> list[dict]:
    """Run train_accelerate.py with `flags`; per epoch: eval_acc and wall seconds since the process started."""
    command = [
        sys.executable,
        "train_accelerate.py",
        *flags,
        "--output_dir",
        str(out),
        "--report_to",
        "none",
        "--checkpointing_steps",
        "none",
    ]
    env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    print(f"{name}: {' '.join(shlex.quote(c) for c in command[1:])}", flush=True)
    started = time.perf_counter()
    finished_at: dict[int, float] = {}
    with subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as process:
        tail = []
        for line in process.stdout:
            tail = (tail + [line])[-40:]
            match = EPOCH_LINE.match(line)
            if match:
                finished_at[int(match.group(1))] = time.perf_counter() - started
                print(f"  {line.rstrip()}  [{finished_at[int(match.group(1))]:.0f} s]", flush=True)
    if process.returncode != 0:
        sys.exit(f"{name} run failed (exit {process.returncode}):\n{''.join(tail)}")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{"epoch": m["epoch"], "eval_acc": m["eval_acc"], "wall_s": finished_at[m["epoch"]]} for m in metrics]


def percentages(curve: list[dict]) -> str:
    return " ".join(f"{100 * point['eval_acc']:.1f}" for point in curve)


def first_reaching(curve: list[dict], target: float) -> dict | None:
    return next((point for point in curve if point["eval_acc"] >= target), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=MINI)
    parser.add_argument("--seed_epochs", type=int, default=30)
    parser.add_argument("--extra", default="", help="more train_accelerate.py flags for both runs, quoted")
    parser.add_argument("--fast_extra", default="", help="more flags for the fast run only (they override the recipe)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke check: 128/64 images, 1 epoch each, nothing recorded"
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    common = ["--data_dir", str(args.data_dir), *shlex.split(args.extra)]
    fast_flags = ["--recipe", "fast", *shlex.split(args.fast_extra)]
    if args.quick:
        args.seed_epochs = 1
        common += ["--max_train_samples", "128", "--max_eval_samples", "64", "--flow_log_steps", "0"]
        common += ["--num_prediction_samples", "0"]
        fast_flags += ["--num_train_epochs", "1"]
    with tempfile.TemporaryDirectory() as tmp:
        seed = timed_run("seed recipe", [*common, "--num_train_epochs", str(args.seed_epochs)], Path(tmp) / "seed")
        fast = timed_run("fast recipe", [*common, *fast_flags], Path(tmp) / "fast")
    target = seed[-1]["eval_acc"]
    reached = first_reaching(fast, target)
    lines = [
        "| recipe | epochs run | final eval acc | reaches A at epoch | wall time to A |",
        "| --- | --- | --- | --- | --- |",
        f"| seed (lab2 defaults) | {len(seed)} | {100 * target:.2f}% (= A) | {len(seed)} | "
        f"{seed[-1]['wall_s']:.0f} s |",
    ]
    if reached:
        ratio = seed[-1]["wall_s"] / reached["wall_s"]
        lines.append(
            f"| fast (--recipe fast {' '.join(fast_flags[2:])}) | {len(fast)} | {100 * fast[-1]['eval_acc']:.2f}% | "
            f"{reached['epoch']} | {reached['wall_s']:.0f} s |"
        )
        verdict = (
            f"Wall-time ratio seed / fast to A: **{ratio:.2f}x** (target ≥ 2x, stretch 3x); "
            f"epochs {len(seed)} vs {reached['epoch']}."
        )
    else:
        lines.append(
            f"| fast (--recipe fast {' '.join(fast_flags[2:])}) | {len(fast)} | {100 * fast[-1]['eval_acc']:.2f}% | "
            "not reached | - |"
        )
        verdict = (
            f"The fast recipe did not reach A = {100 * target:.2f}% in its {len(fast)} epochs "
            f"(best {100 * max(p['eval_acc'] for p in fast):.2f}%)."
        )
    curves = f"Per-epoch eval accuracy, seed: {percentages(seed)}; fast: {percentages(fast)}."
    report = "\n".join(lines) + f"\n\n{verdict}\n{curves}"
    print("\n" + report)
    if not args.quick:
        command = "python bench/time_to_accuracy.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        with open(args.results, "a", encoding="utf-8") as handle:
            handle.write(
                f"\n### {time.strftime('%Y-%m-%d')} · time to accuracy on the mini slice\n\n"
                f"`{command.strip()}`\n\n{report}\n"
            )
    if not reached and not args.quick:  # a smoke run's accuracies mean nothing
        sys.exit(1)


if __name__ == "__main__":
    main()
