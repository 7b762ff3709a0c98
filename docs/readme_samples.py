"""Regenerate the sample outputs of `lab2-eval` and `lab2-predict` in docs/commands.md, or check that they still
match the code.

    make readme-samples                                   # after `make smoke`: rewrites the two sample blocks
    python docs/readme_samples.py --run runs/smoke --data_dir DIR [--check]

Each sample sits in docs/commands.md between `<!-- sample: NAME -->` and `<!-- /sample -->`. The commands run for
real on the finished run and the CIFAR-10 folder given. `--check` compares instead of writing. It masks what a CPU run
does not repeat from one machine to another: the numbers and the predicted class names. It then says which lines
no longer match, and exits 1. tests/test_readme_samples.py runs it on a small real run.
"""

from __future__ import annotations

import argparse
import difflib
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PAGE = REPO / "docs" / "commands.md"  # the page that shows the samples
SHOWN_RUN = "runs/smoke"  # the run the page's commands name
BLOCK = re.compile(r"(<!-- sample: (?P<name>[\w-]+) -->\n```\n)(?P<body>.*?)(```\n<!-- /sample -->)", re.S)
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _run(command: list[str], cwd: Path) -> str:
    """stdout and stderr of one command, in the order a terminal shows them (both are line-buffered here)."""
    result = subprocess.run(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return result.stdout


def eval_sample(data_dir: Path, workdir: Path) -> str:
    """`lab2-eval` on the run: its first four lines, then the last three, as the page shows them. The data
    folder is given by its absolute path: the run may have recorded a relative one, and this runs elsewhere."""
    output = _run([str(BIN / "lab2-eval"), "--model_path", SHOWN_RUN, "--data_dir", str(data_dir)], workdir)
    lines = output.splitlines()
    if not lines or not lines[0].startswith("accuracy:"):
        raise SystemExit(f"readme_samples: lab2-eval failed:\n{output}")
    shown = [*lines[:4], "   ...", *lines[-3:]] if len(lines) > 7 else lines
    return f"$ lab2-eval --model_path {SHOWN_RUN}\n" + "\n".join(shown) + "\n"


def predict_sample(data_dir: Path, workdir: Path) -> str:
    """Three sample images written by examples/sample_images.py, then `lab2-predict` on them and a missing file."""
    sample = [sys.executable, str(REPO / "examples" / "sample_images.py"), "--count", "3", "--output", "samples"]
    written = _run([*sample, "--data_dir", str(data_dir)], workdir)
    predict = ["--model_path", SHOWN_RUN, "samples", "nothing.jpg"]
    predicted = _run([str(BIN / "lab2-predict"), *predict], workdir)
    return (
        f"$ python examples/sample_images.py --count 3 --output samples\n{written}"
        f"$ lab2-predict {' '.join(predict)}\n{predicted}"
    )


def generate(run: Path, data_dir: Path) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        # The page's commands name runs/smoke: a link there lets them run as written, on any run.
        (workdir / "runs").mkdir()
        (workdir / SHOWN_RUN).symlink_to(run.resolve(), target_is_directory=True)
        data_dir = data_dir.resolve()
        return {"lab2-eval": eval_sample(data_dir, workdir), "lab2-predict": predict_sample(data_dir, workdir)}


def masked(text: str) -> list[str]:
    """The shape of a sample: numbers become N, and a class name before a percentage becomes CLASS."""
    text = re.sub(r"(?<![A-Za-z]) *\d+(?:\.\d+)?", " N", text)  # not the 2 of lab2
    text = re.sub(rf"\b(?:{'|'.join(CLASSES)})(?= +N%)", "CLASS", text)
    return text.splitlines()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=Path(SHOWN_RUN), help="a finished run (default: runs/smoke)")
    parser.add_argument("--data_dir", type=Path, required=True, help="the CIFAR-10 folder the run was trained on")
    parser.add_argument("--page", type=Path, default=PAGE, help="the page holding the samples (default: %(default)s)")
    parser.add_argument("--check", action="store_true", help="compare with the page instead of writing it")
    args = parser.parse_args(argv)
    if not (args.run / "model.safetensors").is_file():
        parser.exit(2, f"readme_samples: error: {args.run} holds no model.safetensors; run `make smoke` first.\n")
    page = args.page.read_text(encoding="utf-8")
    shown = {m["name"]: m["body"] for m in BLOCK.finditer(page)}
    fresh = generate(args.run, args.data_dir)
    if set(shown) != set(fresh):
        parser.exit(1, f"readme_samples: {args.page} has samples {sorted(shown)}, expected {sorted(fresh)}\n")
    if args.check:
        stale = {name for name in fresh if masked(fresh[name]) != masked(shown[name])}
        for name in sorted(stale):
            diff = difflib.unified_diff(
                masked(shown[name]), masked(fresh[name]), args.page.name, "the code", lineterm=""
            )
            print(f"the {name} sample no longer matches the code ({args.page}):", *diff, sep="\n")
        sys.exit(1 if stale else 0)
    # Written beside it, then renamed over it: an interrupted run leaves the page as it was.
    temporary = args.page.with_name(f".{args.page.name}.readme-samples.tmp")
    temporary.write_text(BLOCK.sub(lambda m: m[1] + fresh[m["name"]] + m[4], page), encoding="utf-8")
    temporary.replace(args.page)
    print(f"rewrote the {', '.join(sorted(fresh))} samples in {args.page}")


if __name__ == "__main__":
    main()
