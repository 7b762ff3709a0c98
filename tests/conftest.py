"""Shared fixtures: the real mini slice, synthetic official-format folders, and a CLI runner."""

import os
import subprocess
import sys
from pathlib import Path

import launch
import numpy as np
import pytest

from lab2.data.fake_cifar import synthetic_images, write_cifar10_folder

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "cifar10-mini"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    if not (MINI / "cifar-10-batches-py" / "test_batch").exists():
        pytest.skip(f"the real CIFAR-10 mini slice is not at {MINI}")
    return MINI


def write_synthetic_folder(root: Path, num_train: int = 500, num_test: int = 101, seed: int = 0) -> Path:
    """An official-format cifar-10-batches-py folder of learnable synthetic images under root."""
    train = synthetic_images(num_train, 10, seed)
    test = synthetic_images(num_test, 10, seed + 1)
    write_cifar10_folder(root / "cifar-10-batches-py", *train, *test)
    return root


@pytest.fixture
def synthetic_dir(tmp_path) -> Path:
    return write_synthetic_folder(tmp_path / "data")


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.pop("WANDB_API_KEY", None)
    env.update({"WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"})
    env.update(extra)
    return env


def run_cli(args, timeout=300, env=None, **kwargs) -> subprocess.CompletedProcess:
    """Run a command with the venv's tools first on PATH; capture text output. It runs in a session of its own,
    killed whole on a timeout (tests/launch.py), since it may be a launcher with workers of its own."""
    env = env or cli_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return launch.run(args, cwd=REPO, env=env, timeout=timeout, **kwargs)


def train_cmd(*flags, launcher="python") -> list[str]:
    """The training command, by plain python or through `accelerate launch` on the cpu config."""
    if launcher == "accelerate":
        head = [str(BIN / "accelerate"), "launch", "--quiet", "--config_file", "accelerate_configs/cpu.yaml"]
    else:
        head = [sys.executable]
    return [*head, "train_accelerate.py", *map(str, flags)]


def assert_clean_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """Our bad-input contract: non-zero exit, one 'error:' line on stderr naming the problem, no traceback."""
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, output
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]


np.set_printoptions(linewidth=200)
