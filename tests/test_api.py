"""lab2.train's flags: the command line's names, defaults and checks, as one ValueError naming the flag."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

import lab2
from lab2.config import RECIPES, TrainConfig
from lab2.errors import UserError
from lab2.flags import config_from_flags, parse_args


def test_import_lab2_stays_light():
    code = "import sys, lab2; lab2.train; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr


def test_defaults_are_the_command_line_defaults():
    varying = ("run_name", "output_dir")  # both default to the time of the run

    def strip(cfg):
        return {k: v for k, v in cfg.to_dict().items() if k not in varying}

    assert strip(config_from_flags()) == strip(parse_args([]))
    cfg = config_from_flags(data_dir=Path("/data"), learning_rate=1, max_train_samples=None, torch_compile=False)
    assert (cfg.data_dir, cfg.learning_rate, cfg.max_train_samples) == ("/data", 1.0, None)
    assert cfg.output_dir == f"runs/{cfg.run_name}"
    # The step flags take Python ints as the command line takes digits (checkpointing_steps=500 was refused).
    cfg = config_from_flags(checkpointing_steps=500, flow_log_steps=10)
    assert (cfg.checkpointing_steps, cfg.flow_log_steps) == ("500", "10")


@pytest.mark.parametrize(
    "flags, fragment",
    [
        ({"num_train_epoch": 1}, "unknown flag 'num_train_epoch'; did you mean 'num_train_epochs'?"),
        ({"warp_speed": True}, "unknown flag 'warp_speed'; the flags are lab2.config.TrainConfig's fields"),
        ({"num_train_epochs": "3"}, "--num_train_epochs must be an integer, got '3' (str)"),
        ({"num_train_epochs": True}, "--num_train_epochs must be an integer, got True"),
        ({"num_train_epochs": 2.0}, "--num_train_epochs must be an integer, got 2.0 (float)"),
        ({"max_eval_samples": 1.5}, "--max_eval_samples must be an integer or None"),
        ({"learning_rate": "fast"}, "--learning_rate must be a number, got 'fast'"),
        ({"data_dir": 3}, "--data_dir must be a string, got 3"),
        ({"overwrite_output_dir": 1}, "--overwrite_output_dir must be True or False"),
        ({"dataset": "mnist"}, "--dataset must be one of cifar10, fake"),
        ({"per_device_train_batch_size": 0}, "--per_device_train_batch_size must be >= 1"),
        ({"checkpointing_steps": "often"}, "--checkpointing_steps must be 'epoch', 'none' or an integer in 1.."),
        ({"checkpointing_steps": 0}, "--checkpointing_steps must be 'epoch', 'none' or an integer in 1.."),
        # Issue 23, item 7: a float or a bool step count was "must be str, got 2.5 (float)".
        (
            {"flow_log_steps": 2.5},
            "--flow_log_steps must be 'auto' or an integer in 0..1,000,000,000 (optimizer steps)",
        ),
        ({"flow_log_steps": True}, "--flow_log_steps must be 'auto' or an integer in 0.."),
        ({"checkpointing_steps": 2.5}, "--checkpointing_steps must be 'epoch', 'none' or an integer in 1.."),
    ],
)
def test_bad_flags_raise_one_value_error_naming_the_flag(flags, fragment):
    with pytest.raises(ValueError) as caught:
        lab2.train(**flags)
    assert fragment in str(caught.value)
    assert caught.value.__suppress_context__  # one error, not a chain


def test_none_means_not_given_for_every_flag():
    """Issue 23, item 7: `resume_from_checkpoint=None` was refused as "must be str"; None keeps the default."""
    varying = ("run_name", "output_dir")
    every_flag_none = {f.name: None for f in dataclasses.fields(TrainConfig) if f.name not in varying}
    defaults = {k: v for k, v in config_from_flags().to_dict().items() if k not in varying}
    assert {k: v for k, v in config_from_flags(**every_flag_none).to_dict().items() if k not in varying} == defaults
    cfg = config_from_flags(recipe="fast", num_train_epochs=None, resume_from_checkpoint=None)
    assert (cfg.num_train_epochs, cfg.resume_from_checkpoint) == (RECIPES["fast"]["num_train_epochs"], "")
    with pytest.raises(UserError, match="unknown flag 'warp_speed'"):
        config_from_flags(warp_speed=None)  # a misspelt name is still refused


def test_input_the_command_line_rejects_is_a_value_error_too(tmp_path):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    with pytest.raises(ValueError, match="--output_dir .* is a file"):
        lab2.train(output_dir=not_a_folder, dataset="fake")


@pytest.mark.slow
def test_a_diverged_run_raises_training_diverged(tmp_path):
    # In a subprocess: a run creates Accelerate's process-wide state, which must not leak into other tests.
    code = (
        "import lab2\n"
        f"lab2.train(dataset='fake', data_dir={str(tmp_path / 'data')!r}, output_dir={str(tmp_path / 'nan')!r}, "
        "report_to='none',\n"
        "           fake_train_samples=128, fake_test_samples=32, per_device_train_batch_size=32, num_train_epochs=1,\n"
        "           learning_rate=1e30, logging_steps=1, flow_log_steps=0, num_prediction_samples=0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "lab2.api.TrainingDiverged: the loss became NaN/inf" in result.stderr
    assert "NaN/inf at step" in result.stdout  # the run's own message says where
    assert not (tmp_path / "nan" / "model.safetensors").exists()  # the bad weights were never exported


@pytest.mark.slow
def test_train_from_a_worker_thread_returns_the_summary(tmp_path):
    # Only the main thread may install signal handlers: a run from a thread keeps the caller's handling.
    code = (
        "import threading, lab2\n"
        "out = {}\n"
        f"flags = dict(dataset='fake', data_dir={str(tmp_path / 'data')!r}, output_dir={str(tmp_path / 'run')!r}, "
        "report_to='none',\n"
        "             fake_train_samples=128, fake_test_samples=32, per_device_train_batch_size=64, "
        "num_train_epochs=1)\n"
        "worker = threading.Thread(target=lambda: out.update(lab2.train(**flags)))\n"
        "worker.start(); worker.join()\n"
        "print('num_eval_samples', out['num_eval_samples'])\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "num_eval_samples 32" in result.stdout


@pytest.mark.slow
def test_a_second_train_call_beside_a_running_one_is_refused(tmp_path):
    """Two threads, one process: the second lab2.train call raises at once instead of mixing with the first."""
    code = (
        "import threading, time, pathlib, lab2\n"
        "out = {}\n"
        f"data, first, second = {str(tmp_path / 'data')!r}, pathlib.Path({str(tmp_path / 'first')!r}), "
        f"{str(tmp_path / 'second')!r}\n"
        "flags = dict(dataset='fake', data_dir=data, report_to='none', fake_train_samples=256, fake_test_samples=32,\n"
        "             per_device_train_batch_size=32, num_train_epochs=2, flow_log_steps=0, num_prediction_samples=0)\n"
        "worker = threading.Thread(target=lambda: out.update(lab2.train(output_dir=first, **flags)))\n"
        "worker.start()\n"
        "while not (first / '.lab2-run.json').exists() and worker.is_alive():\n"
        "    time.sleep(0.02)\n"
        "try:\n"
        "    lab2.train(output_dir=second, **flags)\n"
        "    print('second call trained')\n"
        "except RuntimeError as error:\n"
        "    print('refused:', error, '| first still running:', worker.is_alive())\n"
        "worker.join()\n"
        "print('first finished with', out['num_eval_samples'], 'eval samples')\n"
        "try:\n"  # the guard is released once the first call returns: the next call gets as far as its flags
        "    lab2.train(output_dir=first / 'config.json')\n"
        "except ValueError as error:\n"
        "    print('after:', error)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "refused: lab2.train is already running in this process" in output
    assert "first still running: True" in output and "second call trained" not in output
    assert not (tmp_path / "second").exists()
    assert "first finished with 32 eval samples" in output
    assert "after: --output_dir" in output and "is a file" in output
