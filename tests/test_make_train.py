"""`make train` as a newcomer uses it: Ctrl-C mid-epoch, then the resume command lab2 prints, followed literally."""

import http.server
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
from conftest import REPO, cli_env
from launch import started

from lab2.flags import resume_advice
from lab2.state.checkpoint import list_checkpoints

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent
# The venv the tests run in stands for make's .venv; -o keeps make from reinstalling into it.
MAKE = ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/.lab2-installed"]
SMALL = "--max_train_samples 512 --per_device_train_batch_size 64 --max_eval_samples 128 --report_to none"
SMALL += " --flow_log_steps 0 --num_prediction_samples 0 --checkpointing_steps 1"


def _default_sigint() -> None:
    """A terminal's foreground job starts with SIGINT at its default. A test run from a background job or a CI
    runner may inherit it ignored, and then neither make nor the recipe's shell could hear Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _make(args: list[str], stop_when=None, timeout=300) -> tuple[int, str]:
    """Run make in its own process group (as a terminal's foreground job); when `stop_when()` turns true, send
    SIGINT to the whole group, as Ctrl-C does. Returns make's status and its merged output."""
    env = cli_env()
    env.pop("TQDM_DISABLE")  # the bar is part of what the user sees
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    with started([*MAKE, *args], cwd=REPO, env=env, preexec_fn=_default_sigint, **pipes) as proc:  # killed whole
        if stop_when is not None:
            deadline = time.time() + timeout
            while not stop_when() and proc.poll() is None and time.time() < deadline:
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_ctrl_c_under_make_ends_with_lab2s_advice_and_the_advice_resumes(mini_dir, tmp_path):
    out_dir = tmp_path / "run"
    status, out = _make(
        ["train", f"DATA_DIR={mini_dir}", f"TRAIN_ARGS={SMALL} --num_train_epochs 1 --output_dir {out_dir}"],
        stop_when=lambda: list_checkpoints(out_dir / "checkpoints"),
    )
    lines = [line for line in out.splitlines() if line.strip()]
    assert status == -signal.SIGINT, out  # make itself ends by SIGINT: the shell sees an interrupted job
    assert "Traceback" not in out and "make: ***" not in out, out  # no launcher traceback, no make line
    assert "were not passed to `accelerate launch`" not in out, (
        out
    )  # Accelerate's warning: the Makefile gives the value
    last = lines[-1]
    assert last.startswith("stopped by SIGINT") and "resume with: make train " in last, out
    progress = json.loads((list_checkpoints(out_dir / "checkpoints")[-1] / "progress.json").read_text())
    assert 0 < progress["batch_in_epoch"] < 8, progress  # mid-epoch

    # Follow the advice literally (only pointing make at the test's venv).
    advice = shlex.split(last.split("resume with: ", 1)[1])
    assert advice[:2] == ["make", "train"] and f"DATA_DIR={mini_dir}" in advice, advice
    status, out = _make(advice[1:])
    assert status == 0, out
    assert f"resumed from {out_dir}/checkpoints/" in out, out
    # The FLOPs table is one line on resume, so the "resumed from" line stays on the screen.
    resumed = out[out.index("resumed from") :]
    assert "% FLOPs" not in resumed and "model: 4,441,482 parameters, 0.1612 GFLOPs per sample" in resumed, out
    # The resumed epoch's speed counts only the images trained after the resume.
    record = json.loads((out_dir / "metrics.jsonl").read_text().splitlines()[-1])
    trained_after_resume = (8 - progress["batch_in_epoch"]) * 64
    assert record["train_images_per_s"] * record["epoch_time_s"] == pytest.approx(trained_after_resume), record


@pytest.mark.parametrize(
    ("argv", "env", "expected"),
    [
        (["--data_dir", "d", "--lr", "1"], {}, "resume with the same command plus: --output_dir o"),
        (
            ["--data_dir", "./data", "--num_train_epochs", "2", "--output_dir", "old"],
            {"LAB2_LAUNCHED_BY": "make"},
            "resume with: make train TRAIN_ARGS='--num_train_epochs 2 --output_dir o --resume_from_checkpoint latest'",
        ),
        (  # a --data_dir in TRAIN_ARGS comes after make's own and stays in TRAIN_ARGS; odd paths stay quoted
            ["--data_dir", "my data", "--data_dir=x", "--resume_from_checkpoint=latest"],
            {"LAB2_LAUNCHED_BY": "make"},
            "resume with: make train 'DATA_DIR=my data' TRAIN_ARGS='--data_dir=x --output_dir o "
            "--resume_from_checkpoint latest'",
        ),
    ],
)
def test_resume_advice_speaks_the_starting_commands_language(argv, env, expected):
    assert resume_advice("o", argv, env).startswith(expected)


def test_no_data_under_make_says_data_dir_and_leaves_no_empty_folders(tmp_path, monkeypatch):
    # No network, deterministically: the download goes to a proxy port nothing listens on (refused at once).
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    data, run = tmp_path / "data", tmp_path / "runs" / "first"
    status, out = _make(["train", f"DATA_DIR={data}", f"TRAIN_ARGS=--report_to none --output_dir {run}"])
    errors = [line for line in out.splitlines() if "error:" in line]
    assert status == 2 and len(errors) == 1 and "Traceback" not in out, out
    assert "make train DATA_DIR=" in errors[0] and "--data_dir" not in errors[0], errors
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # ./data, the run folder and runs/ are gone


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """A package index that answers every request with 503, the status pip retries by default."""

    hits: list[str] = []

    def do_GET(self):  # noqa: N802 - http.server's name
        self.hits.append(self.path)
        self.send_response(503)
        self.end_headers()

    def log_message(self, *args):
        pass


def _cpu_torch(tmp_path, index: str) -> subprocess.CompletedProcess:
    """`make cpu-torch` (what make's install runs when nvidia-smi sees no GPU) into a new venv, against `index`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}  # this machine's own pip settings off
    env["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run(
        ["make", "--no-print-directory", f"VENV={tmp_path / 'venv'}", f"PYTHON={sys.executable}", "cpu-torch",
         f"TORCH_CPU_INDEX={index}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    notes = [line for line in done.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no working torch + torchvision" in notes[0] and "default index" in notes[0], done.stdout
    site = tmp_path / "venv" / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert not list(site.glob("torch*")), list(site.glob("torch*"))  # nothing half-installed, no broken pair left
    return done


def test_without_a_gpu_make_tries_the_cpu_wheels_once_then_says_it_falls_back(tmp_path):
    """An index that cannot serve: one request per try (no retry storm), one line naming the fallback, make goes on."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Unavailable)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        _cpu_torch(tmp_path, f"http://127.0.0.1:{server.server_address[1]}/simple")
    finally:
        server.shutdown()
    assert _Unavailable.hits and len(_Unavailable.hits) <= 2, _Unavailable.hits  # pip's default would retry 5 times


def _wheel(index: Path, name: str, version: str, files: dict[str, str]) -> None:
    """A pure-Python wheel of `files` in a PEP 503 page of its own under `index`."""
    info = f"{name}-{version}.dist-info"
    wheel_info = "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    files = {**files, f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"}
    files[f"{info}/WHEEL"] = wheel_info
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    page = index / name
    page.mkdir(parents=True)
    wheel = f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(page / wheel, "w") as archive:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            archive.writestr(path, text)
    (page / "index.html").write_text(f'<html><body><a href="{wheel}">{wheel}</a></body></html>')


def test_a_cpu_torch_paired_with_a_torchvision_that_does_not_load_is_removed_for_the_default_index(tmp_path):
    """The CPU index serves, but the pair does not import together (a CUDA torchvision beside a CPU torch: its ops
    fail to load): both are uninstalled, so the install that follows takes a matched pair from the default index."""
    index = tmp_path / "simple"
    _wheel(index, "torch", "2.99.0", {"torch/__init__.py": ""})
    broken_ops = "raise RuntimeError('operator torchvision::nms does not exist')\n"
    _wheel(
        index, "torchvision", "0.99.0", {"torchvision/__init__.py": "import torch\n", "torchvision/ops.py": broken_ops}
    )
    _cpu_torch(tmp_path, index.as_uri())
