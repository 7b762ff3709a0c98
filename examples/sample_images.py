"""Write the first N CIFAR-10 test images as PNG files, to try `lab2-predict` without writing a script.

    python examples/sample_images.py --data_dir ./data --count 8 --output samples
    lab2-predict --model_path runs/<run> samples

Each file is named <index>-<true class>.png, so the prediction can be checked by eye; characters a file name
cannot hold safely ('/' in "t-shirt/top") become '_'. The output folder must be new or empty: nothing is ever
written over.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from PIL import Image

from lab2.data.cifar import find_cifar10_folder
from lab2.data.cifar_files import TEST_FILE, read_cifar_batch, read_class_names
from lab2.errors import UserError, exit_with_user_error
from lab2.flags import Parser, number_flag
from lab2.state.files import atomic_write


def file_label(class_name: str) -> str:
    """`class_name` as part of one file name: a '/' (or '..') must not make a folder or point outside --output."""
    return re.sub(r"[^\w+-]+", "_", class_name)[:100]


def write_samples(data_dir: str | Path, count: int, output: str | Path) -> list[Path]:
    folder = find_cifar10_folder(data_dir)
    if folder is None:
        raise UserError(f"no cifar-10-batches-py folder in {data_dir}; give --data_dir the folder make train uses.")
    output = Path(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise UserError(f"{output} exists and is not an empty folder; choose a new --output.")
    names = read_class_names(folder)
    images, labels = read_cifar_batch(folder / TEST_FILE, len(names))
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for index in range(min(count, len(labels))):
        path = output / f"{index:04d}-{file_label(names[labels[index]])}.png"
        image = Image.fromarray(images[index].transpose(1, 2, 0))  # (3, 32, 32) -> (32, 32, 3)
        atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))  # a full disk: one line
        written.append(path)
    return written


def newest_run(runs: Path = Path("runs")) -> str:
    """The most recently started lab2 run folder under `runs` (by its marker), for the "try:" line."""
    markers = sorted(runs.glob("*/.lab2-run.json"), key=lambda marker: marker.stat().st_mtime)
    return str(markers[-1].parent) if markers else "runs/<run>"


def main(argv: list[str] | None = None) -> None:
    parser = Parser(prog="sample_images.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="./data", help="folder holding cifar-10-batches-py (default: ./data)")
    parser.add_argument("--count", type=number_flag("--count", minimum=1, maximum=10_000), default=8)
    parser.add_argument("--output", default="samples", help="a new or empty folder (default: samples)")
    args = parser.parse_args(argv)
    try:
        written = write_samples(args.data_dir, args.count, args.output)
    except UserError as error:
        exit_with_user_error(error, "lab2 sample_images.py")
    print(f"wrote {len(written)} images to {args.output}; try: lab2-predict --model_path {newest_run()} {args.output}")
    sys.exit(0)


if __name__ == "__main__":
    main()
