"""Training throughput against the machine itself, in one run: GEMM peak, bare step, lab2's loop, the seed.

Four figures, measured in the same process one after the other (this machine is
shared and noisy, so only ratios within one run mean much):

1. peak: `torch.mm` on 4096x4096 fp32 (bf16 with --mixed_precision bf16), the
   machine's practical matrix-multiply peak;
2. bare step: SimpleCNN forward, backward and fused Adam on batches already on the
   device (batch 128, channels_last) - the most a training loop could reach;
3. lab2's loop: `train_accelerate.py` with default flags (--report_to none, no
   checkpoints) on the mini slice, images/s read from its metrics.jsonl over the
   epochs after the first (which pays one-off warm-up);
4. the seed recipe: the course lab's per-image PIL DataLoader and plain loop.

Each is printed in images/s and training GFLOP/s (training FLOPs per image from
lab2.explain.flops: forward + backward, 2 FLOPs per multiply-add), with the fraction of
peak, the loop / bare-step ratio (target >= 0.90) and the lab2 / seed ratio
(target >= 1.5). The table is appended to bench/RESULTS.md.

    python bench/train_throughput.py                   # mini slice, 3 lab2 epochs, 2 seed epochs
    python bench/train_throughput.py --quick           # smoke check: a few steps of each, nothing recorded
    python bench/train_throughput.py --tile 50000 --epochs 5 --mixed_precision bf16   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab2.data.cifar import CustomCIFAR10, read_cifar10_folder, test_transform, train_transform  # noqa: E402
from lab2.data.cifar_files import write_cifar10_folder  # noqa: E402
from lab2.explain.flops import count_flops  # noqa: E402
from lab2.models import SimpleCNN  # noqa: E402

MINI = REPO.parent / "shared" / "data" / "cifar10-mini"
TARGET_LOOP_RATIO = 0.90
TARGET_SEED_RATIO = 1.5


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def tiled_copy(data_dir: Path, size: int, into: Path) -> Path:
    """The training split repeated up to `size` images (a full-size stand-in when only the mini slice exists)."""
    splits = read_cifar10_folder(data_dir / "cifar-10-batches-py")
    reps = -(-size // len(splits.train_labels))
    images = splits.train_images.repeat(reps, 1, 1, 1)[:size].numpy()
    labels = splits.train_labels.repeat(reps)[:size].numpy()
    write_cifar10_folder(
        into / "cifar-10-batches-py", images, labels, splits.test_images.numpy(), splits.test_labels.numpy()
    )
    return into


def gemm_peak(device: torch.device, dtype: torch.dtype, size: int = 4096, repeats: int = 5) -> float:
    """Best-of-`repeats` FLOP/s of one size x size matrix product (2 n^3 FLOPs)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)  # warm-up: library initialisation, CPU frequency
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def bare_step(device: torch.device, steps: int, batch_size: int = 128, bf16: bool = False) -> float:
    """Images/s of forward + backward + fused Adam on device-resident channels_last batches, after 2 warm-up steps."""
    torch.manual_seed(0)
    model = SimpleCNN().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    images = torch.randn(batch_size, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (batch_size,), device=device)
    times = []
    for step in range(steps + 2):  # two warm-up steps: allocator, oneDNN/cuDNN primitive choice
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        if step >= 2:
            times.append(time.perf_counter() - start)
    # Images over total time, as lab2's per-epoch rate is computed, so the two compare like with like.
    return batch_size * len(times) / sum(times)


def lab2_loop(data_dir: Path, epochs: int, out: Path, extra: list[str]) -> dict:
    """lab2's training run, the command a user types (so no move inside lab2 can break this script); rates from
    metrics.jsonl. It inherits this process's environment: TQDM_DISABLE, ACCELERATE_MIXED_PRECISION."""
    command = [
        sys.executable,
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
    done = subprocess.run(command, cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lab2 run failed with exit code {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = metrics[1:] or metrics  # the first epoch pays one-off warm-up (primitive choice, compile)
    images = sum(m["train_images_per_s"] * m["epoch_time_s"] for m in steady)
    return {
        "images_per_s": images / sum(m["epoch_time_s"] for m in steady),
        "eval_acc": summary["final_eval_acc"],
        "precision": summary["precision"],
        "device": summary["device"],
    }


def seed_recipe(
    data_dir: Path,
    epochs: int,
    batch_size: int,
    workers: int,
    device: torch.device,
    max_samples: int | None = None,
    seed: int = 42,
) -> dict:
    """The course lab's loop: PIL transforms in DataLoader workers, fp32, Adam 1e-3; training time only."""
    torch.manual_seed(seed)
    train = CustomCIFAR10.from_folder(data_dir, train=True, transform=train_transform())
    test = CustomCIFAR10.from_folder(data_dir, train=False, transform=test_transform())
    if max_samples:  # both splits: a smoke run's evaluation should be small too
        train = Subset(train, range(min(max_samples, len(train))))
        test = Subset(test, range(min(max_samples, len(test))))
    pin = device.type == "cuda"
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0
    )
    test_loader = DataLoader(test, batch_size=256, num_workers=workers, pin_memory=pin)
    model = SimpleCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    train_time, images = 0.0, 0
    for _ in range(epochs):
        model.train()
        start = time.perf_counter()
        for x, y in train_loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            images += len(y)
        synchronize(device)
        train_time += time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
            total += len(y)
    return {"images_per_s": images / train_time, "eval_acc": correct / total}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=MINI)
    parser.add_argument("--epochs", type=int, default=3, help="lab2 epochs (the first is left out of its rate)")
    parser.add_argument("--seed_epochs", type=int, default=2, help="seed-recipe epochs")
    parser.add_argument("--bare_steps", type=int, default=20, help="timed bare steps")
    parser.add_argument("--tile", type=int, default=0, help="repeat the training split up to N images (0: as is)")
    parser.add_argument(
        "--mixed_precision", choices=("no", "bf16"), default="no", help="for lab2, the bare step and the peak"
    )
    parser.add_argument("--workers", type=int, default=2, help="seed recipe DataLoader workers")
    parser.add_argument("--extra", default="", help="more train_accelerate.py flags for lab2, quoted")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 128 images, 2 lab2 epochs, 1 seed epoch (no workers), 2 bare steps of batch 32, "
        "a 1024² GEMM; no RESULTS.md",
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    extra = shlex.split(args.extra)
    max_samples, gemm_size, bare_batch = None, 4096, 128
    if args.quick:
        args.epochs, args.seed_epochs, args.bare_steps, args.workers = 2, 1, 2, 0
        max_samples, gemm_size, bare_batch = 128, 1024, 32
        extra += ["--max_train_samples", "128", "--max_eval_samples", "64", "--flow_log_steps", "0"]
        extra += ["--num_prediction_samples", "0"]
    os.environ["TQDM_DISABLE"] = "1"  # the lab2 run inherits it
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    bf16 = args.mixed_precision == "bf16"
    os.environ["ACCELERATE_MIXED_PRECISION"] = args.mixed_precision
    training_flops = count_flops(SimpleCNN()).training_flops  # per image, forward + backward

    peak = gemm_peak(device, torch.bfloat16 if bf16 else torch.float32, gemm_size)
    print(f"peak: torch.mm {gemm_size}^2 {'bf16' if bf16 else 'fp32'} {peak / 1e9:.0f} GFLOP/s", flush=True)
    bare = bare_step(device, args.bare_steps, bare_batch, bf16=bf16)
    print(f"bare step: {bare:.0f} images/s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = tiled_copy(args.data_dir, args.tile, Path(tmp) / "tiled") if args.tile else args.data_dir
        ours = lab2_loop(data_dir, args.epochs, Path(tmp) / "lab2-run", extra)
        print(f"lab2 loop: {ours['images_per_s']:.0f} images/s", flush=True)
        seed = seed_recipe(data_dir, args.seed_epochs, 128, args.workers, device, max_samples)
        print(f"seed recipe: {seed['images_per_s']:.0f} images/s", flush=True)

    rows = [
        (f"peak: torch.mm {gemm_size}² {'bf16' if bf16 else 'fp32'}", None, peak),
        (
            f"bare step (batch {bare_batch}, channels_last, fused Adam, {'bf16' if bf16 else 'fp32'})",
            bare,
            bare * training_flops,
        ),
        (
            f"lab2 loop (default flags, {ours['precision']}, epochs 2-{args.epochs})",
            ours["images_per_s"],
            ours["images_per_s"] * training_flops,
        ),
        (
            f"seed recipe (PIL, {args.workers} workers, fp32, {args.seed_epochs} epochs)",
            seed["images_per_s"],
            seed["images_per_s"] * training_flops,
        ),
    ]
    lines = ["| what | images/s | training GFLOP/s | fraction of peak |", "| --- | --- | --- | --- |"]
    for name, rate, flops in rows:
        lines.append(f"| {name} | {'' if rate is None else f'{rate:.0f}'} | {flops / 1e9:.1f} | {flops / peak:.2f} |")
    loop_ratio = ours["images_per_s"] / bare
    seed_ratio = ours["images_per_s"] / seed["images_per_s"]
    lines += [
        "",
        f"loop / bare step: **{loop_ratio:.2f}** (target ≥ {TARGET_LOOP_RATIO:.2f}); "
        f"lab2 / seed: **{seed_ratio:.2f}x** (target ≥ {TARGET_SEED_RATIO}x); "
        f"training FLOPs per image {training_flops / 1e9:.3f} G "
        "(lab2.explain.flops: forward + backward, 2 per multiply-add); "
        f"eval accuracy lab2 {100 * ours['eval_acc']:.2f}%, seed {100 * seed['eval_acc']:.2f}% "
        "(few epochs: a sanity check only).",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if args.quick:
        return
    command = "python bench/train_throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    where = ours["device"] if device.type == "cuda" else f"CPU: {cpu_name()}, {torch.get_num_threads()} threads"
    with open(args.results, "a", encoding="utf-8") as handle:
        handle.write(
            f"\n### {time.strftime('%Y-%m-%d')} · {where} · loop against the machine\n\n"
            f"`{command.strip()}` (torch {torch.__version__})\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
