"""Every benchmark script runs (issue 21): `make bench` once stopped at an ImportError after a move, and nothing
noticed. Each bench/*.py answers --help, which imports what it uses; each runs its --tiny or --quick mode to
the end and exits 0; and bench/gpu_check.sh --tiny, what runs on the day a GPU is lent, runs on the CPU.

The runs read a small synthetic folder (not ../shared), so they need no data. A new script fails
test_every_script_has_a_small_run until it has a small mode and a line in SMALL.
"""

import shutil
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env, run_cli, write_synthetic_folder

BENCH = REPO / "bench"
SCRIPTS = sorted(path.name for path in BENCH.glob("*.py"))

# Each script's small run, given the synthetic folder (its parent `data`, holding cifar-10-batches-py); slow ones
# start lab2's training command or several processes.
SMALL = {
    "code_size.py": (lambda data: ["--rev", "HEAD"], False),
    "cifar_reader_cost.py": (lambda data: ["--data_dir", data, "--rounds", "1"], False),
    "cpu_precision.py": (lambda data: ["--tiny"], False),
    "flow_overhead.py": (lambda data: ["--tiny"], False),
    "recipe_tune.py": (lambda data: ["--tiny", "--data_dir", data / "cifar-10-batches-py"], False),
    "threads_side_by_side.py": (lambda data: ["--tiny"], True),
    "train_throughput.py": (lambda data: ["--quick", "--data_dir", data], True),
    "time_to_accuracy.py": (lambda data: ["--quick", "--data_dir", data], True),
    "profile_loop.py": (lambda data: ["--quick", "--data_dir", data], True),
}
APART = {"compare_revisions.py", "gpu_check.py"}  # run below: from a clone, and through gpu_check.sh

HELP_ALL = """
import runpy, sys
failed = []
for script in sys.argv[1:]:
    sys.argv = [script, "--help"]
    try:
        runpy.run_path(script, run_name="__main__")
        failed.append(f"{script}: --help did not exit")
    except SystemExit as exit:
        if exit.code not in (0, None):
            failed.append(f"{script}: exit {exit.code}")
    except BaseException as error:
        failed.append(f"{script}: {type(error).__name__}: {error}")
print("\\n".join(failed) or "all answered --help")
sys.exit(1 if failed else 0)
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_folder(tmp_path_factory.mktemp("bench") / "data", num_train=128, num_test=64)


def _ran(result, script: str) -> None:
    assert result.returncode == 0, (
        f"{script} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )


def test_every_script_has_a_small_run():
    assert set(SCRIPTS) == set(SMALL) | APART, "give a new bench script a --tiny mode and a line in SMALL"


def test_every_script_answers_help():
    """One interpreter for all, so torch is imported once; each script's own imports still run."""
    result = run_cli([sys.executable, "-c", HELP_ALL, *(str(BENCH / name) for name in SCRIPTS)], timeout=300)
    _ran(result, "bench/*.py --help")


@pytest.mark.parametrize(
    "script",
    [pytest.param(name, marks=pytest.mark.slow) if slow else name for name, (_, slow) in SMALL.items()],
)
def test_small_run(script, data, tmp_path):
    if script == "profile_loop.py" and not (
        shutil.which("py-spy") or (Path(sys.executable).parent / "py-spy").exists()
    ):
        pytest.skip("py-spy is not installed (pip install -e '.[bench]')")
    flags, _ = SMALL[script]
    _ran(run_cli([sys.executable, BENCH / script, *flags(data)], timeout=300), script)


@pytest.mark.slow
def test_gpu_check_tiny_runs_on_the_cpu(tmp_path):
    command = ["bash", BENCH / "gpu_check.sh", "--tiny", "--workdir", tmp_path / "work"]
    result = run_cli(command, timeout=300, env=cli_env(PYTHON=sys.executable))
    _ran(result, "gpu_check.sh --tiny")
    assert "| lab2, eager | 1 |" in result.stdout, result.stdout


@pytest.mark.slow
def test_compare_revisions_quick(data, tmp_path):
    """From a clone, so its temporary worktrees are made there, not in this checkout's repository."""
    clone = tmp_path / "clone"
    _ran(run_cli(["git", "clone", "--quiet", "--shared", REPO, clone], timeout=120), "git clone")
    shutil.copy(BENCH / "compare_revisions.py", clone / "bench")  # this checkout's script, on the clone's HEAD
    script = clone / "bench" / "compare_revisions.py"
    result = run_cli([sys.executable, script, "HEAD", "HEAD", "--quick", "--data_dir", data], timeout=300)
    _ran(result, "compare_revisions.py")
    assert "after / before" in result.stdout
