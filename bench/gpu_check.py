"""The GPU check behind bench/gpu_check.sh: GPU tests, 30 epochs at full CIFAR-10 size three ways, the seed.

Runs lab2 from the checkout (PYTHONPATH=.) with --report_to none, so it needs only
torch, torchvision, accelerate, safetensors, matplotlib, tensorboard and tqdm (no
wandb, no datasets, no network). Data: the mini slice in .gpu_bundle/cifar10-mini
(see bench/gpu_bundle.sh), tiled to 50,000 training images; without it, synthetic
data of the same size (--dataset fake).

Rows: eager; --torch_compile; --torch_compile --torch_compile_mode reduce-overhead
--dataloader_drop_last (CUDA graphs need static shapes); the seed recipe for 2
epochs. Columns: wall time of the whole process, training time and images/s from
summary.json, MFU (bf16 dense peak of the GPU), final eval accuracy. One table is
printed and appended to bench/RESULTS.md.

    bash bench/gpu_check.sh            # on the GPU machine
    bash bench/gpu_check.sh --tiny     # smoke check anywhere (tests/test_bench.py runs it on the CPU):
                                       # 1 epoch of 256 images, eager only, nothing recorded
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / ".gpu_bundle"
TARGET_TRAIN_S = 5.0  # issue 12: 30 epochs in at most 5 s of training time on an H100
TARGET_SEED_RATIO = 30.0


def run_gpu_tests() -> str:
    if importlib.util.find_spec("pytest") is None:
        return "not run: pytest is missing (bench/gpu_bundle.sh packs a wheel; gpu_check.sh installs it)"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    print(done.stdout[-3000:], done.stderr[-2000:], sep="\n", flush=True)
    last = (done.stdout.strip().splitlines() or ["no output"])[-1]
    return f"{'passed' if done.returncode == 0 else 'FAILED'}: {last}"


def data_flags(size: int, workdir: Path, test_size: int = 1000) -> tuple[list[str], str, Path | None]:
    """Flags for a `size`-image training split: the tiled mini slice when bundled, else synthetic data."""
    mini = BUNDLE / "cifar10-mini"
    if (mini / "cifar-10-batches-py" / "test_batch").exists():
        sys.path.insert(0, str(REPO / "bench"))
        from train_throughput import tiled_copy

        folder = tiled_copy(mini, size, workdir / "tiled")
        return ["--data_dir", str(folder)], f"mini slice tiled to {size}", folder
    return (
        [
            "--dataset",
            "fake",
            "--data_dir",
            str(workdir / "fake"),
            "--fake_train_samples",
            str(size),
            "--fake_test_samples",
            str(test_size),
        ],
        f"synthetic (--dataset fake), {size} images",
        None,
    )


def lab2_row(name: str, flags: list[str], out: Path, precision: str) -> dict:
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
        "--overwrite_output_dir",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), TQDM_DISABLE="1", ACCELERATE_MIXED_PRECISION=precision)
    print(f"{name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", flush=True)
        return {"name": name, "error": f"exit {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1]}"}
    summary = json.loads((out / "summary.json").read_text())
    row = {
        "name": name,
        "wall_s": wall,
        "train_s": summary["train_time_s"],
        "images_per_s": summary["train_images_per_s"],
        "mfu": summary.get("mfu"),
        "eval_acc": summary["final_eval_acc"],
        "epochs": summary["epochs"],
        "device": summary["device"],
    }
    print(f"  -> {row}", flush=True)
    return row


def seed_row(data_dir: Path | None, epochs: int, max_samples: int | None) -> dict:
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from train_throughput import seed_recipe

    if data_dir is None:
        return {"name": "seed recipe", "error": "needs the bundled mini slice (bench/gpu_bundle.sh)"}
    started = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    workers = min(4, os.cpu_count() or 1)
    result = seed_recipe(data_dir, epochs, 128, workers, device, max_samples)
    return {
        "name": f"seed recipe (PIL, {workers} workers, fp32, {epochs} epochs)",
        "wall_s": time.perf_counter() - started,
        "train_s": None,
        "images_per_s": result["images_per_s"],
        "mfu": None,
        "eval_acc": result["eval_acc"],
        "epochs": epochs,
    }


def table(rows: list[dict]) -> str:
    lines = [
        "| run | epochs | wall time | training time | train images/s | MFU | eval acc |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | | | | | | failed: {r['error']} |")
            continue
        train = f"{r['train_s']:.1f} s" if r["train_s"] is not None else ""
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else ""
        lines.append(
            f"| {r['name']} | {r['epochs']} | {r['wall_s']:.1f} s | {train} | {r['images_per_s']:.0f} | {mfu} | "
            f"{100 * r['eval_acc']:.2f}% |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="smoke check on any machine: 256 images (64 to evaluate), 1 epoch, no compile on CPU, nothing recorded",
    )
    parser.add_argument("--workdir", type=Path, default=BUNDLE / "work", help="scratch folder (emptied first)")
    parser.add_argument("--size", type=int, default=50_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed_epochs", type=int, default=2)
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = parser.parse_args()
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not args.tiny:
        sys.exit("gpu_check: no CUDA device is visible; this check is for a GPU machine (use --tiny for a smoke check)")
    tiny_flags = ["--max_eval_samples", "64", "--flow_log_steps", "0", "--num_prediction_samples", "0"]
    if args.tiny:
        args.size, args.epochs, args.seed_epochs = 256, 1, 1
    precision = "bf16" if cuda else "no"
    workdir = args.workdir
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    tests = run_gpu_tests() if cuda else "not run: no CUDA device"
    flags, data_note, folder = data_flags(args.size, workdir, 64 if args.tiny else 1000)
    base = [*flags, "--num_train_epochs", str(args.epochs), *(tiny_flags if args.tiny else [])]
    variants = [("lab2, eager", [])]
    if cuda:  # inductor on a CPU compiles for minutes: the compile rows are for the GPU
        variants += [
            ("lab2, --torch_compile", ["--torch_compile"]),
            (
                "lab2, CUDA graphs (--torch_compile_mode reduce-overhead --dataloader_drop_last)",
                ["--torch_compile", "--torch_compile_mode", "reduce-overhead", "--dataloader_drop_last"],
            ),
        ]
    rows = [lab2_row(name, [*base, *extra], workdir / f"run{i}", precision) for i, (name, extra) in enumerate(variants)]
    rows.append(seed_row(folder, args.seed_epochs, 256 if args.tiny else None))
    device = next((r["device"] for r in rows if "device" in r), "?")
    eager, seed = rows[0], rows[-1]
    verdicts = []
    best = min((r for r in rows[:-1] if "error" not in r), key=lambda r: r["train_s"], default=None)
    if best:
        verdicts.append(
            f"fastest lab2 run: {best['name']}, {best['train_s']:.1f} s of training for {args.epochs} epochs "
            f"(target ≤ {TARGET_TRAIN_S:.0f} s on an H100)"
        )
        if "error" not in seed:
            verdicts.append(
                f"{best['images_per_s'] / seed['images_per_s']:.1f}x the seed recipe's images/s "
                f"(target ≥ {TARGET_SEED_RATIO:.0f}x)"
            )
    report = (
        f"GPU tests: {tests}\n\nData: {data_note}; precision {precision}; torch {torch.__version__}.\n\n"
        f"{table(rows)}\n\n" + "; ".join(verdicts) + "."
    )
    print("\n" + report)
    if not args.tiny:
        with open(args.results, "a", encoding="utf-8") as handle:
            handle.write(f"\n### {time.strftime('%Y-%m-%d')} · {device} · `bash bench/gpu_check.sh`\n\n{report}\n")
    if "error" in eager:
        sys.exit(1)


if __name__ == "__main__":
    main()
