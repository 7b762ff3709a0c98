"""The package layout is the architecture: imports only point down the layers, and checkpoints name no lab2 code.

Layers, lowest first (README, "Where a change goes"):
errors, figures -> config, flags -> data, models -> state -> explain -> tracking -> report -> engine -> cli
-> api. No import points up: the registries' names (--optim, --lr_scheduler_type, --model) are defined in lab2.config.
"""

from __future__ import annotations

import ast
import json
import pickletools
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "cifar10-mini"
LAYER = {
    "errors": 0,
    "figures": 0,
    "config": 1,
    "flags": 1,
    "data": 2,
    "models": 2,
    "state": 3,
    "explain": 4,
    "tracking": 5,
    "report": 6,
    "engine": 7,
    "cli": 8,
    "api": 9,
}


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")


def _lab2_imports(path: Path) -> set[str]:
    """Every lab2 module `path` imports, at any depth of the file (lazy imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "lab2":
            if node.module == "lab2":
                found.update(f"lab2.{alias.name}" for alias in node.names)
            else:
                found.update(
                    f"{node.module}.{a.name}"
                    if (REPO / node.module.replace(".", "/") / f"{a.name}.py").exists()
                    else node.module
                    for a in node.names
                )
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "lab2")
    return found


def _part(module: str) -> str | None:
    bits = module.split(".")
    return bits[1] if len(bits) > 1 else None


def test_every_module_sits_in_a_known_layer():
    for path in (REPO / "lab2").rglob("*.py"):
        part = _part(_module_name(path))
        assert part is None or part in LAYER, f"{path}: add its folder to the layers (README and this test)"


def test_imports_only_point_down_the_layers():
    upward = []
    for path in (REPO / "lab2").rglob("*.py"):
        me = _module_name(path)
        for other in _lab2_imports(path):
            a, b = _part(me), _part(other)
            if a and b and a != b and LAYER[b] > LAYER[a]:
                upward.append(f"{me} imports {other}")
    assert upward == []


def test_explain_takes_any_model_and_never_imports_data_or_engine():
    for path in (REPO / "lab2" / "explain").glob("*.py"):
        parts = {_part(m) for m in _lab2_imports(path)}
        assert not parts & {"data", "engine"}, path


def test_subpackage_inits_stay_thin_and_torch_free():
    code = "import sys, lab2.config, lab2.flags, lab2.data, lab2.engine, lab2.explain, lab2.tracking, lab2.state;"
    code += "import lab2.cli, lab2.report; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"
    for init in (REPO / "lab2").glob("*/__init__.py"):
        tree = ast.parse(init.read_text(encoding="utf-8"))
        assert all(isinstance(node, ast.Expr) for node in tree.body), f"{init} should hold a docstring only"


def _pickled_globals(data: bytes) -> set[str]:
    names, strings = set(), []
    for opcode, arg, _ in pickletools.genops(data):
        if opcode.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE"):
            strings.append(arg)
        elif opcode.name == "GLOBAL":
            names.add(arg.replace(" ", "."))
        elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
            names.add(f"{strings[-2]}.{strings[-1]}")
    return names


@pytest.mark.slow
@pytest.mark.skipif(not (MINI / "cifar-10-batches-py").is_dir(), reason="needs ../shared/data/cifar10-mini")
def test_checkpoint_pickles_name_no_lab2_code(tmp_path):
    """A checkpoint survives moving lab2's modules: its pickles reference torch, numpy and the standard library only."""
    out = tmp_path / "run"
    subprocess.run(
        [sys.executable, "train_accelerate.py", "--data_dir", str(MINI), "--max_train_samples", "256",
         "--max_eval_samples", "64", "--num_train_epochs", "1", "--report_to", "none", "--flow_log_steps", "0",
         "--lr_scheduler_type", "one_cycle", "--output_dir", str(out)],
        cwd=REPO, check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    (checkpoint,) = (out / "checkpoints").iterdir()
    pickles = [p for p in checkpoint.iterdir() if p.suffix in (".bin", ".pkl")]
    assert {p.name for p in pickles} >= {"optimizer.bin", "scheduler.bin", "random_states_0.pkl"}
    referenced = set()
    for path in pickles:
        if zipfile.is_zipfile(path):  # torch.save's zip format: the object graph is data.pkl
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name.endswith("data.pkl"):
                        referenced |= _pickled_globals(archive.read(name))
        else:
            referenced |= _pickled_globals(path.read_bytes())
    assert referenced, "no pickled globals found: the reader is broken"
    assert {name for name in referenced if name.split(".")[0] == "lab2"} == set()
    assert json.loads((checkpoint / "progress.json").read_text())["global_step"] == 2  # 256 images, batches of 128
