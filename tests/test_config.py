import dataclasses
import json

import pytest

from lab2.config import GROUPS, TrainConfig
from lab2.errors import UserError
from lab2.flags import build_parser, config_from_dict, parse_args


def test_every_field_is_a_flag_with_its_default_in_help():
    text = build_parser().format_help()
    for field in dataclasses.fields(TrainConfig):
        assert f"--{field.name}" in text
    assert "(default: 128)" in text and "(default: 0.001)" in text and "(default: ./data)" in text


def test_help_is_grouped_with_each_default_once_choices_and_examples():
    import re

    parser = build_parser(prog="lab2-train")
    text = parser.format_help()
    headings = [group.title for group in parser._action_groups if group._group_actions]
    assert headings == ["options", *GROUPS], headings  # -h alone, then every section in order
    assert all(f.metadata["group"] in GROUPS for f in dataclasses.fields(TrainConfig))
    options = re.split(r"\n  (?=--)", text)  # one chunk per option
    assert not [o for o in options if o.count("(default:") > 1]
    assert "(default: None)" not in text and "(default: )" not in text
    assert "--model {simple_cnn}" in text and "--max_eval_samples N" in text
    assert text.startswith("usage: lab2-train [options]")
    examples = text.split("examples:", 1)[1]
    commands = [line.strip() for line in examples.splitlines() if line.startswith("    lab2-train ")]
    assert len(commands) == 4
    for command in commands:  # every example parses
        parse_args(command.split()[1:])


def test_help_names_the_command_that_was_typed_and_needs_no_torch(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    code = (
        "import sys; sys.argv = ['/somewhere/bin/lab2-train', '--help']\n"
        "from lab2.api import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('torch imported:', 'torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(repo)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60).stdout
    assert out.startswith("usage: lab2-train ") and "torch imported: False" in out, out
    # `python -m lab2.api` runs the module's file as argv[0]: the usage line says the command typed.
    command = [sys.executable, "-m", "lab2.api", "--help"]
    module = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert module.stdout.startswith("usage: python -m lab2.api [options]"), module.stdout + module.stderr


def test_defaults_follow_the_seed_and_design():
    cfg = parse_args([])
    assert (cfg.num_train_epochs, cfg.per_device_train_batch_size, cfg.learning_rate, cfg.seed) == (30, 128, 1e-3, 42)
    assert cfg.data_pipeline == "device" and cfg.report_to == "wandb" and cfg.flow_log_steps == "auto"
    assert cfg.output_dir.startswith("runs/simple_cnn-")


def test_round_trip_through_config_json():
    cfg = parse_args(["--max_train_samples", "100", "--overwrite_output_dir"])
    assert config_from_dict({**cfg.to_dict(), "from_the_future": 1}) == cfg


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["--per_device_train_batch_size", "0"], "--per_device_train_batch_size"),
        (["--learning_rate", "-1"], "--learning_rate"),
        (["--max_eval_samples", "0"], "--max_eval_samples"),
        (["--checkpointing_steps", "0"], "--checkpointing_steps"),
    ],
)
def test_invalid_values_name_the_flag(capsys, argv, fragment):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(argv)
    assert exit_info.value.code == 2 and fragment in capsys.readouterr().err


def test_values_set_in_python_meet_the_same_ranges():
    from lab2.config import check_values

    with pytest.raises(UserError, match="--seed"):
        check_values(TrainConfig(seed=-1))
    with pytest.raises(UserError, match="--learning_rate"):
        check_values(TrainConfig(learning_rate=float("inf")))


def test_checkpoint_every_steps():
    assert parse_args(["--checkpointing_steps", "500"]).checkpoint_every_steps == 500
    assert parse_args([]).checkpoint_every_steps is None


@pytest.mark.parametrize(("value", "stored"), [("auto", "auto"), ("0", "0"), ("25", "25"), (25, "25"), (0, "0")])
def test_flow_log_steps_takes_auto_or_a_count_from_the_command_line_and_python(value, stored):
    from lab2.flags import config_from_flags

    if isinstance(value, int):
        assert config_from_flags(flow_log_steps=value).flow_log_steps == stored
    else:
        assert parse_args(["--flow_log_steps", value]).flow_log_steps == stored


@pytest.mark.parametrize("bad", ["-1", "often", "1.5", ""])
def test_a_bad_flow_log_steps_is_one_line_naming_auto(capsys, bad):
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--flow_log_steps", bad])
    assert exit_info.value.code == 2 and "--flow_log_steps must be 'auto'" in capsys.readouterr().err


def test_a_resumed_run_keeps_the_name_its_folder_holds(tmp_path):
    """Issue 22: a resume without --run_name used to rename the run after the time of the resume."""
    (tmp_path / "config.json").write_text(json.dumps({"run_name": "simple_cnn-20261203-084900"}))
    resume = ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"]
    assert parse_args(resume).run_name == "simple_cnn-20261203-084900"
    assert parse_args([*resume, "--run_name", "mine"]).run_name == "mine"  # a name given explicitly wins
    assert parse_args(["--output_dir", str(tmp_path)]).run_name != "simple_cnn-20261203-084900"  # a fresh run
    (tmp_path / "config.json").write_text("[damaged")
    assert parse_args(resume).run_name.startswith("simple_cnn-")  # the resume itself reports the folder


def test_a_resume_keeps_the_runs_name_and_tracker_project_unless_given(tmp_path):
    """A W&B project WANDB_PROJECT chose is in config.json; a resume that took another would continue the same W&B
    run in a second project (found by a hostile try)."""
    (tmp_path / "config.json").write_text(json.dumps({"run_name": "first", "project_name": "from-wandb-project"}))
    resume = ["--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest"]
    cfg = parse_args(resume)
    assert (cfg.run_name, cfg.project_name) == ("first", "from-wandb-project")
    cfg = parse_args([*resume, "--project_name", "chosen", "--run_name", "renamed"])
    assert (cfg.run_name, cfg.project_name) == ("renamed", "chosen")
    assert parse_args(["--output_dir", str(tmp_path)]).project_name == TrainConfig.project_name  # not a resume
