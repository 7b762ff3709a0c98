"""End-to-end training throughput: lab2's default path against a faithful seed recipe, in one run.

The seed recipe is what the course lab does: torchvision transforms on PIL
images, a DataLoader with worker processes, fp32, Adam, SimpleCNN, a plain
PyTorch loop. lab2 runs as users run it: `accelerate launch` of
train_accelerate.py with an Accelerate config (device-resident data, batched
augmentation, channels_last, the config's precision).

Both train the same model on the same data for the same number of epochs and
report training images/s (training time only, evaluation excluded) and eval
accuracy; the script prints the ratio and appends the result, with device,
command and date, to bench/RESULTS.md.

    python bench/train_throughput.py                       # CPU, mini slice, 3 epochs
    python bench/train_throughput.py --tile 50000 --epochs 30 --seed_epochs 2   # GPU, full-size set
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
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab2.data import CustomCIFAR10, read_cifar10_folder, test_transform, train_transform, write_cifar10_folder  # noqa: E402
from lab2.models import SimpleCNN  # noqa: E402

MINI = REPO.parent / "shared" / "data" / "cifar10-mini"


def tiled_copy(data_dir: Path, size: int, into: Path) -> Path:
    """The training split repeated up to `size` images (a full-size stand-in when only the mini slice exists)."""
    splits = read_cifar10_folder(data_dir / "cifar-10-batches-py")
    reps = -(-size // len(splits.train_labels))
    images = splits.train_images.repeat(reps, 1, 1, 1)[:size].numpy()
    labels = splits.train_labels.repeat(reps)[:size].numpy()
    write_cifar10_folder(into / "cifar-10-batches-py", images, labels, splits.test_images.numpy(), splits.test_labels.numpy())
    return into


def seed_recipe(data_dir: Path, epochs: int, batch_size: int, workers: int, device: torch.device, seed: int = 42) -> dict:
    """The course lab's loop: PIL transforms in DataLoader workers, fp32, Adam 1e-3."""
    torch.manual_seed(seed)
    train = CustomCIFAR10.from_folder(data_dir, train=True, transform=train_transform())
    test = CustomCIFAR10.from_folder(data_dir, train=False, transform=test_transform())
    pin = device.type == "cuda"
    train_loader = DataLoader(train, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
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
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_time += time.perf_counter() - start
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in test_loader:
            correct += (model(x.to(device)).argmax(1).cpu() == y).sum().item()
            total += len(y)
    return {"images_per_s": images / train_time, "eval_acc": correct / total, "train_time_s": train_time}


def lab2_run(data_dir: Path, epochs: int, config: str, out: Path, extra: list[str]) -> dict:
    command = [
        str(Path(sys.executable).parent / "accelerate"), "launch", "--quiet", "--config_file", config,
        "train_accelerate.py", "--data_dir", str(data_dir), "--num_train_epochs", str(epochs),
        "--output_dir", str(out), "--report_to", "none", "--checkpointing_steps", "none", *extra,
    ]
    env = dict(os.environ, TQDM_DISABLE="1")
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"lab2 run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steady = metrics[1:] or metrics  # the first epoch pays one-off warm-up (cuDNN autotune, compile)
    steady_rate = sum(m["train_images_per_s"] * m["epoch_time_s"] for m in steady) / sum(m["epoch_time_s"] for m in steady)
    return {
        "images_per_s": summary["train_images_per_s"],
        "steady_images_per_s": steady_rate,
        "eval_acc": summary["final_eval_acc"],
        "train_time_s": summary["train_time_s"],
        "precision": summary["precision"],
        "device": summary["device"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=MINI)
    parser.add_argument("--epochs", type=int, default=3, help="epochs for lab2 (and the seed recipe unless --seed_epochs)")
    parser.add_argument("--seed_epochs", type=int, default=None, help="epochs for the seed recipe (default: --epochs)")
    parser.add_argument("--tile", type=int, default=0, help="repeat the training split up to N images (0: as is)")
    parser.add_argument("--config", default=None, help="Accelerate config for lab2 (default: GPU bf16 if CUDA, else CPU fp32)")
    parser.add_argument("--workers", type=int, default=2, help="seed recipe DataLoader workers")
    parser.add_argument("--extra", default="", help="more train_accelerate.py flags for lab2, quoted")
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    config = args.config or f"accelerate_configs/{'single_gpu_bf16' if cuda else 'cpu'}.yaml"
    seed_epochs = args.seed_epochs or args.epochs
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = tiled_copy(args.data_dir, args.tile, Path(tmp) / "tiled") if args.tile else args.data_dir
        n_train = len(read_cifar10_folder(data_dir / "cifar-10-batches-py").train_labels)
        print(f"data: {data_dir} ({n_train} training images); device: {device}; lab2 config: {config}", flush=True)
        ours = lab2_run(data_dir, args.epochs, config, Path(tmp) / "lab2-run", shlex.split(args.extra))
        print(f"lab2 ({ours['precision']}): {ours['images_per_s']:.0f} images/s over {args.epochs} epochs "
              f"(steady {ours['steady_images_per_s']:.0f}), train time {ours['train_time_s']:.1f} s, eval acc {100 * ours['eval_acc']:.2f}%", flush=True)
        seed = seed_recipe(data_dir, seed_epochs, 128, args.workers, device)
        print(f"seed recipe (fp32, PIL, {args.workers} workers): {seed['images_per_s']:.0f} images/s over {seed_epochs} epochs, "
              f"train time {seed['train_time_s']:.1f} s, eval acc {100 * seed['eval_acc']:.2f}%", flush=True)
    ratio = ours["images_per_s"] / seed["images_per_s"]
    print(f"ratio lab2 / seed: {ratio:.2f}x end-to-end training images/s; accuracy difference {100 * (ours['eval_acc'] - seed['eval_acc']):+.2f} points")
    command = "python bench/train_throughput.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    device_name = ours["device"] if cuda else f"CPU: {_cpu_name()}, {torch.get_num_threads()} threads"
    with open(args.results, "a", encoding="utf-8") as handle:
        handle.write(
            f"\n### {time.strftime('%Y-%m-%d')} · {device_name}\n\n`{command.strip()}` (torch {torch.__version__})\n\n"
            f"| pipeline | epochs | train images/s | eval acc |\n| --- | --- | --- | --- |\n"
            f"| lab2 ({config}, {ours['precision']}) | {args.epochs} | {ours['images_per_s']:.0f} | {100 * ours['eval_acc']:.2f}% |\n"
            f"| seed recipe (fp32, PIL, {args.workers} workers) | {seed_epochs} | {seed['images_per_s']:.0f} | {100 * seed['eval_acc']:.2f}% |\n\n"
            f"Ratio: **{ratio:.2f}x**; lab2 training wall time {ours['train_time_s']:.1f} s for {args.epochs} epochs of {n_train} images.\n"
        )


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
