"""What lab2's safe CIFAR-10 batch reader costs against a plain `pickle.load`, in one run.

Reads every batch file of a folder (the mini slice by default: 6 files, 6,102 images) with
`lab2.data.cifar_files.read_cifar_batch` (the restricted unpickler, the data checks, one copy of the pixels)
and with `pickle.load(f, encoding="bytes")` (what the official CIFAR-10 page suggests, and which runs any code
a file names). The two alternate, round after round, so a noisy machine slows both alike; it prints the
median time of each and the ratio safe / plain. Nothing is written.

    python bench/cifar_reader_cost.py              # the mini slice, 5 rounds (a few seconds)
    python bench/cifar_reader_cost.py --rounds 21 --data_dir ./data
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lab2.data.cifar import find_cifar10_folder  # noqa: E402
from lab2.data.cifar_files import TEST_FILE, TRAIN_FILES, read_cifar_batch, synthetic_images, write_cifar10_folder  # noqa: E402

MINI = REPO.parent / "shared" / "data" / "cifar10-mini"


def plain(path: Path) -> None:
    with open(path, "rb") as handle:
        pickle.load(handle, encoding="bytes")


def timed(read, files: list[Path]) -> float:
    start = time.perf_counter()
    for path in files:
        read(path)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=MINI, help="a folder holding cifar-10-batches-py")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of both readers")
    parser.add_argument("--synthetic", type=int, default=0, help="read N synthetic images instead (no data needed)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = find_cifar10_folder(args.data_dir) if not args.synthetic else None
        if folder is None:
            n = args.synthetic or 6000
            print(f"reading {n} synthetic images (written to a temporary folder)", flush=True)
            folder = write_cifar10_folder(Path(tmp), *synthetic_images(n, 10, 0), *synthetic_images(n // 5, 10, 1))
        files = [folder / name for name in (*TRAIN_FILES, TEST_FILE)]
        images = sum(len(read_cifar_batch(path)[1]) for path in files)  # also warms the page cache
        size = sum(path.stat().st_size for path in files)
        times = {"safe": [], "plain": []}
        for _ in range(args.rounds):
            times["safe"].append(timed(read_cifar_batch, files))
            times["plain"].append(timed(plain, files))
    safe, fast = statistics.median(times["safe"]), statistics.median(times["plain"])
    print(f"{len(files)} batch files, {images:,} images, {size / 2**20:.1f} MiB, {args.rounds} rounds")
    print(f"read_cifar_batch (safe):           median {1000 * safe:7.1f} ms")
    print(f'pickle.load(encoding="bytes"):     median {1000 * fast:7.1f} ms')
    print(f"safe / plain = {safe / fast:.2f}")


if __name__ == "__main__":
    main()
