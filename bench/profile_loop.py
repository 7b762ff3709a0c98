"""Where lab2's training loop spends its time: py-spy samples of a short run, summed by part of the step.

Runs `py-spy record --native` on train_accelerate.py (a short run on the mini slice,
--report_to none) and sums the main thread's samples inside `train_one_epoch` by
the loop's parts: forward, backward, optimizer step (the bare step's work), the
prepared DataLoader over the DeviceDataset (gather, crop/flip, normalise), flow snapshots, zero_grad and the
rest of the loop's bookkeeping; time outside the epochs (set-up, evaluation,
final files) is listed apart. Needs py-spy (`pip install -e '.[bench]'`).

    python bench/profile_loop.py                      # 2 epochs of 2,560 images
    python bench/profile_loop.py --profile out.json   # keep the speedscope file (https://www.speedscope.app)
    python bench/profile_loop.py --quick              # smoke check: 1 epoch of 128 images
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "cifar10-mini"


def short_name(frame: dict) -> str:
    """'Trainer.train_one_epoch' -> 'train_one_epoch'; native C++ names are kept whole."""
    name = frame["name"]
    return name.rsplit(".", 1)[-1] if "::" not in name else name


def part_of_step(names: list[str], files: list[str], at: int) -> str:
    """The loop part a sample under train_one_epoch (at index `at` of its stack) belongs to."""
    below, first_file = names[at + 1 : at + 8], (files[at + 1] if at + 1 < len(files) else "")
    if any(part in first_file for part in ("data_loader.py", "dataloader.py", "device_data.py")):
        return "loader (prepared DataLoader over the DeviceDataset: gather, crop/flip, normalise)"
    if "backward" in below:
        return "backward"
    if below and below[0] in ("_wrapped_call_impl", "_call_impl", "forward"):
        return "forward"
    if "step" in below[:3]:
        return "optimizer step (fused Adam)"
    if "_flow_snapshot" in below or "_record_flow" in below:
        return "flow snapshots"
    return "loop bookkeeping: " + (below[0][:60] if below else "train_one_epoch itself")


def summarise(speedscope: Path) -> str:
    data = json.loads(speedscope.read_text())
    frames = data["shared"]["frames"]
    main = max(data["profiles"], key=lambda p: sum(p["weights"]))  # the training thread
    inside, outside = collections.Counter(), collections.Counter()
    for stack, seconds in zip(main["samples"], main["weights"], strict=False):
        names = [short_name(frames[i]) for i in stack]
        files = [frames[i].get("file") or "" for i in stack]
        if "train_one_epoch" in names:
            inside[part_of_step(names, files, names.index("train_one_epoch"))] += seconds
        else:
            where = next(
                (n for n in ("evaluate", "finish", "__init__") if n in names or f"_{n}" in names),
                "start-up and imports",
            )
            outside[where] += seconds
    loop = sum(inside.values())
    lines = [
        f"inside train_one_epoch: {loop:.1f} s of samples",
        "| part | seconds | share of the epoch loop |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {part} | {s:.2f} | {100 * s / loop:.1f}% |" for part, s in inside.most_common()]
    bare = sum(inside[p] for p in ("forward", "backward", "optimizer step (fused Adam)"))
    lines.append(
        f"\nthe bare step's work (forward, backward, optimizer): {100 * bare / loop:.1f}% of the loop; "
        f"so the loop can reach at most ~{bare / loop:.2f}x the bare step at equal per-op speed"
    )
    lines.append("outside the epochs: " + ", ".join(f"{k} {v:.1f} s" for k, v in outside.most_common()))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=MINI)
    parser.add_argument("--max_train_samples", type=int, default=2560)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rate", type=int, default=25, help="py-spy samples per second")
    parser.add_argument("--profile", type=Path, default=None, help="keep the speedscope file here")
    parser.add_argument("--extra", default="", help="more train_accelerate.py flags, quoted")
    parser.add_argument("--quick", action="store_true", help="smoke check: 1 epoch of 128 images")
    args = parser.parse_args()
    eval_samples = 512
    if args.quick:
        args.max_train_samples, args.epochs, eval_samples = 128, 1, 64
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(py_spy).exists():
        sys.exit("profile_loop: py-spy is not installed; pip install -e '.[bench]' (or pip install py-spy)")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.profile or Path(tmp) / "profile.json"
        command = [
            py_spy,
            "record",
            "--native",
            "-r",
            str(args.rate),
            "-f",
            "speedscope",
            "-o",
            str(out),
            "--",
            sys.executable,
            "train_accelerate.py",
            "--data_dir",
            str(args.data_dir),
            "--max_train_samples",
            str(args.max_train_samples),
            "--max_eval_samples",
            str(eval_samples),
            "--num_train_epochs",
            str(args.epochs),
            "--report_to",
            "none",
            "--output_dir",
            str(Path(tmp) / "run"),
            "--checkpointing_steps",
            "none",
            *args.extra.split(),
        ]
        env = dict(os.environ, TQDM_DISABLE="1", PYTHONPATH=str(REPO))
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            sys.exit(f"profile_loop: the profiled run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
        print(summarise(out))


if __name__ == "__main__":
    main()
