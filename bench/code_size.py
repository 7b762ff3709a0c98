"""How big lab2's product code is, and how much of it is explanation (issue 21's goal of <= 5,500 lines).

Prints the product lines and modules (as `find lab2 train_accelerate.py -name '*.py' | xargs cat | wc -l`), the
loop module's lines and lab2 imports, and the *floor*: the same files with every docstring cut to one line, every
comment-only line and every blank line the formatter allows dropped, then `ruff format` (the layout `make lint`
keeps). What lies between the two numbers is explanation and spacing; to go below the floor, code must go.

    python bench/code_size.py              # this checkout
    python bench/code_size.py --rev fa836bf  # a revision (read with git archive, nothing checked out)
"""

from __future__ import annotations

import argparse
import ast
import io
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tokenize
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LOOP = "lab2/engine/loop.py"


def product_files(root: Path) -> list[Path]:
    return sorted(root.glob("lab2/**/*.py")) + [root / "train_accelerate.py"]


def without_explanation(text: str) -> str:
    """`text` with each multi-line docstring on one line and no comment-only or blank line (not yet formatted)."""
    lines = text.splitlines()
    drop, replace = set(), {}
    for node in ast.walk(ast.parse(text)):
        body = getattr(node, "body", None)
        if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or not body:
            continue
        first = body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            start = lines[first.lineno - 1]
            replace[first.lineno - 1] = start[: len(start) - len(start.lstrip())] + '"""One line."""'
            drop.update(range(first.lineno, first.end_lineno))
    strings = set()  # lines inside other multi-line strings keep their blank lines: they are data
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.STRING and token.end[0] > token.start[0] and token.start[0] - 1 not in replace:
            strings.update(range(token.start[0], token.end[0]))
        if token.type == tokenize.COMMENT and lines[token.start[0] - 1].lstrip().startswith("#"):
            drop.add(token.start[0] - 1)
    kept = [replace.get(i, line) for i, line in enumerate(lines) if i not in drop and (line.strip() or i in strings)]
    return "\n".join(kept) + "\n"


def measure(root: Path, ruff: str) -> None:
    files = product_files(root)
    lines = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in files}
    with tempfile.TemporaryDirectory() as scratch:
        for path in files:
            target = Path(scratch, path.relative_to(root))
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(without_explanation(path.read_text(encoding="utf-8")), encoding="utf-8")
        subprocess.run([ruff, "format", "--quiet", "--isolated", "--line-length", "120", scratch], check=True)
        floor = sum(len(Path(scratch, p.relative_to(root)).read_text().splitlines()) for p in files)
    total = sum(lines.values())
    print(f"product code: {total:,} lines in {len(files)} modules")
    print(f"floor (one-line docstrings, no comments, no optional blank lines): {floor:,} lines")
    print(f"explanation and spacing: {total - floor:,} lines ({(total - floor) / total:.1%})")
    loop = root / LOOP
    if loop.exists():
        tree = ast.parse(loop.read_text(encoding="utf-8"))
        imported = set()
        for node in tree.body:
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lab2"):
                modules = [f"{node.module}.{a.name}" for a in node.names] if node.module == "lab2.engine" else []
                imported.update(modules or [node.module])
        print(f"{LOOP}: {lines[loop]} lines, {len(imported)} lab2 modules imported")
    for path in sorted(files, key=lines.get, reverse=True)[:5]:
        print(f"  {lines[path]:4d}  {path.relative_to(root)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="a git revision to measure instead of the working tree")
    args = parser.parse_args()
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        sys.exit("bench/code_size.py: ruff is not installed; run `make lint` once (it installs the dev tools).")
    if not args.rev:
        return measure(REPO, ruff)
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", args.rev, "lab2", "train_accelerate.py"], capture_output=True
        )
        if archive.returncode:
            sys.exit(f"bench/code_size.py: git cannot read {args.rev!r}: {archive.stderr.decode().strip()}")
        tarfile.open(fileobj=io.BytesIO(archive.stdout)).extractall(tree, filter="data")
        measure(Path(tree), ruff)


if __name__ == "__main__":
    main()
