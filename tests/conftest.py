"""Shared fixtures: the real mini slice, synthetic official-format folders, and a CLI runner."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import launch
import numpy as np
import pytest

from lab2.data.cifar_files import synthetic_images, write_cifar10_folder

# Two pytest workers share the cores (`make test` runs `-n 2`): one thread per worker and per program a test starts.
# Two processes of two threads each on two cores ran a training step 1.57x slower than two of one thread, measured
# here (threads that spin-wait for each other fight for the same cores). lab2 honours OMP_NUM_THREADS=1 when
# started by python or torchrun; under `accelerate launch` it still takes all cores (tests/test_launch_options.py).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
MINI = REPO.parent / "shared" / "data" / "cifar10-mini"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    if not (MINI / "cifar-10-batches-py" / "test_batch").exists():
        pytest.skip(f"the real CIFAR-10 mini slice is not at {MINI}")
    return MINI


def built_once(tmp_path_factory, name: str, build) -> Path:
    """The folder `build(folder)` makes, built once per test session and shared by both pytest workers: a module's
    tests are spread over the workers, and a module-scoped fixture would train the same run on each. The first
    worker to ask builds it under a lock; the other waits, then reads the same files. Tests must not change it
    (copy it first)."""
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder under xdist
    folder, done = shared / name, shared / f"{name}.built"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed half-way is started again
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


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


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MB tmpfs of the test's own (root only: skipped, with the reason, elsewhere), for the full-disk cases."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({result.stderr.strip() or 'not permitted'}); full-disk cases need root"
        )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def fill_disk(mount: Path, leave_bytes: int = 0) -> None:
    """Fill the file system at `mount` until `leave_bytes` are free."""
    free = shutil.disk_usage(mount).free
    (mount / "filler").write_bytes(b"\0" * max(0, free - leave_bytes))
