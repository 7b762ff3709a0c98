"""W&B never blocks a run (issue 11, section 4): a server that accepts connections and never answers, a closed
port, a malformed WANDB_BASE_URL and an empty WANDB_MODE all end in an offline run in the run folder,
said in one line; a tracker that never started closes silently. Real wandb, real Accelerate."""

import os
import signal
import socket
import threading
import time

import pytest
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration

from lab2.tracking.startup import tracker_init_kwargs
from lab2.tracking.trackers import Tracking


@pytest.fixture
def silent_server():
    """A listener on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held = []

    def accept():
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the socket is: connections are refused


@pytest.fixture
def wandb_env(monkeypatch, tmp_path):
    """A clean W&B environment: credentials given, everything else unset; a hang guard of 120 s."""
    for name in [n for n in os.environ if n.startswith("WANDB_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("HOME", str(tmp_path))
    previous = signal.signal(signal.SIGALRM, lambda *_: pytest.fail("W&B start-up hung for 120 s"))
    signal.alarm(120)
    yield monkeypatch
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _start(tmp_path, report_to="wandb", **kwargs):
    """Tracking.start as the trainer calls it: init kwargs from tracker_init_kwargs, notice and messages collected."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    messages = []
    init_kwargs, notice = tracker_init_kwargs(report_to, run_dir, "test-run", False, **kwargs)
    if notice:
        messages.append(notice)
    tensorboard_dir = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(run_dir / "tensorboard"))
    accelerator = Accelerator(cpu=True, log_with=report_to.split(","), project_config=tensorboard_dir)
    tracking = Tracking(accelerator, printer=messages.append)
    tracking.start("lab2-test", {"a": 1}, init_kwargs)
    tracking.log({"train/loss": 1.0}, step=1)
    tracking.finish()
    return run_dir, messages


@pytest.mark.parametrize("server", ["never-answers", "refuses"])
def test_an_online_start_that_gets_no_answer_falls_back_to_offline_within_the_timeout(
    wandb_env, silent_server, tmp_path, server
):
    """With credentials, wandb.init is bounded by its own init_timeout (no probe of lab2's): a server that accepts
    and never answers, or a closed port, costs about the timeout, then the run logs offline, said in one line,
    and TensorBoard, which Accelerate would start after W&B, starts all the same."""
    wandb_env.setenv(
        "WANDB_BASE_URL", silent_server if server == "never-answers" else f"http://127.0.0.1:{_closed_port()}"
    )
    began = time.monotonic()
    run_dir, messages = _start(tmp_path, "wandb,tensorboard", init_timeout_s=3.0)
    # The 3 s timeout, then an offline start (seconds on a busy machine); unbounded, wandb.init waits 90 s.
    assert time.monotonic() - began < 3.0 + 15.0
    assert len(messages) == 1 and "offline" in messages[0] and "could not start online" in messages[0], messages
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb")), "no offline copy in the run folder"
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*")), "TensorBoard did not start"


@pytest.mark.parametrize(
    "url, fragment",
    [("http://127.0.0.1:99999", "port"), ("http://exa mple..com:80:90/", "malformed"), ("not a url", "malformed")],
    ids=["bad-port", "bad-host", "no-scheme"],
)
def test_a_malformed_base_url_goes_offline_in_one_line(wandb_env, tmp_path, url, fragment):
    wandb_env.setenv("WANDB_BASE_URL", url)
    run_dir, messages = _start(tmp_path)
    assert (
        len(messages) == 1 and "WANDB_BASE_URL" in messages[0] and fragment in messages[0] and "offline" in messages[0]
    ), messages
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


@pytest.mark.parametrize("value", ["", "   ", "sometimes"])
def test_an_empty_or_unknown_wandb_mode_does_not_break_wandb(wandb_env, tmp_path, value):
    wandb_env.delenv("WANDB_API_KEY")
    wandb_env.setenv("WANDB_MODE", value)
    run_dir, messages = _start(tmp_path)
    assert len(messages) == 1 and "credentials" in messages[0], messages
    assert ("WANDB_MODE" in messages[0]) == bool(value.strip())
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def test_closing_a_tracker_that_never_started_says_nothing(wandb_env, tmp_path):
    wandb_env.setenv("WANDB_MODE", "offline")
    accelerator = Accelerator(cpu=True, log_with="wandb")
    messages = []
    tracking = Tracking(accelerator, printer=messages.append)
    # wandb refuses a run id with a slash: wandb.init fails (offline, so no fallback is possible).
    tracking.start("lab2-test", {}, {"wandb": {"mode": "offline", "dir": str(tmp_path), "id": "bad/id"}})
    tracking.finish()
    assert len(messages) == 1 and "could not start" in messages[0], messages
