"""One recipe-tuning run on the mini slice: per-epoch eval accuracy, plain and with test-time flips.

The loop is lab2's hot path without its bookkeeping: the DeviceDataset (uint8 on
the device, batched crop+flip), SimpleCNN in channels_last, lab2.engine.optim's optimizer
and per-step scheduler, cross-entropy with label smoothing. It evaluates every
epoch both without and with flip-averaged logits (the flipped forward is the only
extra cost, and one run then answers both questions). It adds one row to the
table in bench/recipe_tuning.md. Run one at a time:

    OMP_NUM_THREADS=2 nice -n 15 python bench/recipe_tune.py --optim adamw --lr 3e-3 \\
        --scheduler one_cycle --epochs 12 --batch 128 --wd 5e-4 --ls 0.1
    python bench/recipe_tune.py --tiny   # smoke check: 1 epoch of 128 images, no row written
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab2.data.cifar import read_cifar10_folder  # noqa: E402
from lab2.data.device_dataset import DeviceDataset, device_dataloader  # noqa: E402
from lab2.engine.optim import create_optimizer, create_scheduler, scheduler_total_steps  # noqa: E402
from lab2.models import SimpleCNN  # noqa: E402

MINI = REPO.parent / "shared" / "data" / "cifar10-mini" / "cifar-10-batches-py"


@torch.no_grad()
def accuracy(model, loader) -> tuple[float, float]:
    """(plain, flip-averaged) eval accuracy."""
    model.eval()
    plain = flipped = total = 0
    for images, labels in loader:
        logits = model(images)
        both = (logits + model(images.flip(3))) / 2
        plain += (logits.argmax(1) == labels).sum().item()
        flipped += (both.argmax(1) == labels).sum().item()
        total += len(labels)
    model.train()
    return plain / total, flipped / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--optim", default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--scheduler", default="constant")
    parser.add_argument("--warmup", type=float, default=0.0)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--wd", type=float, default=0.0)
    parser.add_argument("--ls", type=float, default=0.0)
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--note", default="")
    parser.add_argument("--log", type=Path, default=REPO / "bench" / "recipe_tuning.md")
    parser.add_argument("--data_dir", type=Path, default=MINI, help="a cifar-10-batches-py folder")
    parser.add_argument("--tiny", action="store_true", help="smoke check: 1 epoch of 128 images (batch 32), no row")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    splits = read_cifar10_folder(args.data_dir)
    if args.tiny:
        args.epochs, args.batch = 1, 32
        splits = splits.truncated(128, 64)
    train_set = DeviceDataset(splits.train_images, splits.train_labels, train=True, seed=args.seed, channels_last=True)
    train = device_dataloader(train_set, args.batch, shuffle=True, seed=args.seed)
    test = device_dataloader(
        DeviceDataset(splits.test_images, splits.test_labels, train=False, channels_last=True), 512, shuffle=False
    )
    model = SimpleCNN().to(memory_format=torch.channels_last)
    optimizer = create_optimizer(
        model.parameters(), args.optim, args.lr, args.wd, args.momentum, fused=args.optim != "sgd"
    )
    scheduler = create_scheduler(optimizer, args.scheduler, scheduler_total_steps(len(train), args.epochs), args.warmup)
    plain_curve, tta_curve = [], []
    started = time.perf_counter()
    for epoch in range(args.epochs):
        train_set.set_epoch(epoch)
        for images, labels in train:
            loss = F.cross_entropy(model(images), labels, label_smoothing=args.ls)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
        plain, flipped = accuracy(model, test)
        plain_curve.append(plain)
        tta_curve.append(flipped)
        print(
            f"epoch {epoch + 1}: eval {100 * plain:.2f}% tta {100 * flipped:.2f}% loss {loss.item():.3f} "
            f"({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
    config = (
        f"{args.optim} lr {args.lr:g} {args.scheduler} warmup {args.warmup:g} batch {args.batch} "
        f"wd {args.wd:g} ls {args.ls:g} epochs {args.epochs}"
        + (f" momentum {args.momentum:g}" if args.optim == "sgd" else "")
    )
    row = (
        f"| {config} | {' '.join(f'{100 * a:.1f}' for a in plain_curve)} | "
        f"{' '.join(f'{100 * a:.1f}' for a in tta_curve)} | {args.note} |"
    )
    if args.tiny:
        print(row)
        return
    lines = args.log.read_text(encoding="utf-8").splitlines()
    last_row = max(i for i, line in enumerate(lines) if line.startswith("| "))  # below the table's last row
    lines.insert(last_row + 1, row)
    args.log.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
