"""Tracking never stops training: offline without credentials (without a network: test_wandb_startup), and a
failing tracker is switched off."""

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker

from lab2.tracking.startup import choose_wandb_mode
from lab2.tracking.trackers import Tracking


def test_no_credentials_means_offline(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    mode, reason = choose_wandb_mode()
    assert mode == "offline" and "credentials" in reason


def test_a_netrc_entry_from_wandb_login_counts_as_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_BASE_URL", raising=False)
    (tmp_path / "netrc").write_text("machine api.wandb.ai\n  login user\n  password " + "x" * 40 + "\n")
    (tmp_path / "netrc").chmod(0o600)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    assert choose_wandb_mode() == ("online", None)


def test_explicit_offline_mode_is_respected(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert choose_wandb_mode() == ("offline", None)


class FlakyTracker(GeneralTracker):
    """A real Accelerate tracker whose backend breaks after its first log call (a dropped connection, say)."""

    name = "flaky"
    requires_logging_directory = False

    def __init__(self):
        super().__init__()
        self.calls = 0

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values):
        pass

    def log(self, values, step=None, **kwargs):
        self.calls += 1
        if self.calls > 1:
            raise RuntimeError("connection reset by peer")


def test_a_tracker_failing_mid_run_is_reported_once_and_switched_off():
    tracker = FlakyTracker()
    accelerator = Accelerator(cpu=True, log_with=[tracker])
    messages = []
    tracking = Tracking(accelerator, printer=messages.append)
    tracking.start("lab2-test", {"a": 1}, {})
    tracking.log({"train/loss": 1.0}, step=1)
    tracking.log({"train/loss": 0.9}, step=2)  # raises inside the tracker
    tracking.log({"train/loss": 0.8}, step=3)
    assert tracker.calls == 2  # not called again after the failure
    assert len(messages) == 1 and "connection reset by peer" in messages[0] and "local files" in messages[0]
    tracking.finish()


def test_a_tracker_that_cannot_start_leaves_training_running(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    from accelerate.utils import ProjectConfiguration

    # TensorBoard cannot create its folder under a file: init_trackers raises.
    accelerator = Accelerator(
        cpu=True,
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(tmp_path), logging_dir=str(blocker / "tb")),
    )
    messages = []
    tracking = Tracking(accelerator, printer=messages.append)
    tracking.start("lab2-test", {}, {})
    tracking.log({"x": 1.0}, step=1)
    assert len(messages) == 1 and "could not start" in messages[0]
    tracking.finish()
