"""Every numeric flag of every command is checked for type, range and finiteness when it is parsed:
exit 2 and one `error:` line naming the flag (issue 11, section 5)."""

import dataclasses

import pytest

from lab2.cli import eval as eval_cli
from lab2.cli import predict as predict_cli
from lab2.cli.tools import flops_main
from lab2.config import TrainConfig
from lab2.flags import parse_args

# Values no numeric flag may take: non-finite, non-ASCII digits, text, and absurd magnitudes.
NOT_NUMBERS = ["nan", "inf", "-inf", "١٢", "1_000", "ten", ""]


def _numeric_fields():
    return [f for f in dataclasses.fields(TrainConfig) if f.type.removesuffix(" | None") in ("int", "float")]


def _parse_fails(capsys, parse, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert exit_info.value.code == 2, err
    assert len(lines) == 1 and flag in lines[0], err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**64)], "--seed"),
        (["--dist_timeout_s", "99999999999999"], "--dist_timeout_s"),
        (["--checkpointing_steps", "٣"], "--checkpointing_steps"),
        (["--learning_rate", "inf"], "--learning_rate"),
        (["--learning_rate", "nan"], "--learning_rate"),
        (["--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size"),
        (["--max_eval_samples", "-5"], "--max_eval_samples"),
        (["--num_workers", "-1"], "--num_workers"),
        (["--fake_train_samples", "10000000000"], "--fake_train_samples"),
        (["--num_prediction_samples", "100000000"], "--num_prediction_samples"),
        (["--logging_steps", "1.5"], "--logging_steps"),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) else v,
)
def test_issue_samples_for_training_flags(capsys, argv, flag):
    _parse_fails(capsys, lambda a: parse_args(["--dataset", "fake", *a]), argv, flag)


@pytest.mark.parametrize("field", _numeric_fields(), ids=lambda f: f.name)
def test_every_numeric_training_flag_is_checked(capsys, field):
    """Every int/float field refuses non-numbers, non-finite values and values out of its range."""
    flag = f"--{field.name}"
    bounds = field.metadata.get("bounds")
    assert bounds, f"{flag} declares no range"
    # A float flag may leave its maximum open (a huge learning rate is how the divergence tests diverge).
    huge = [str(10**30)] if "maximum" in bounds else []
    for bad in [*NOT_NUMBERS, "-1", "1e400", *huge]:
        _parse_fails(capsys, parse_args, [flag, bad], flag)


@pytest.mark.parametrize(
    "main, argv, flag",
    [
        (predict_cli.main, ["--model_path", "x", "a.png", "--top_k", "-1"], "--top_k"),
        (predict_cli.main, ["--model_path", "x", "a.png", "--top_k", "0"], "--top_k"),
        (predict_cli.main, ["--model_path", "x", "a.png", "--top_k", "nan"], "--top_k"),
        (eval_cli.main, ["--model_path", "x", "--per_device_eval_batch_size", "0"], "--per_device_eval_batch_size"),
        (eval_cli.main, ["--model_path", "x", "--max_eval_samples", "-5"], "--max_eval_samples"),
        (eval_cli.main, ["--model_path", "x", "--num_prediction_samples", "-3"], "--num_prediction_samples"),
        (eval_cli.main, ["--model_path", "x", "--max_eval_samples", "٣"], "--max_eval_samples"),
        (flops_main, ["--num_classes", "0"], "--num_classes"),
        (flops_main, ["--num_classes", "99999999999"], "--num_classes"),
    ],
    ids=lambda v: "_".join(v) if isinstance(v, list) else getattr(v, "__module__", v),
)
def test_other_commands_check_their_numeric_flags(capsys, main, argv, flag):
    _parse_fails(capsys, main, argv, flag)


def test_good_values_still_parse():
    cfg = parse_args(
        ["--seed", "4294967295", "--learning_rate", "3e-4", "--checkpointing_steps", "500", "--max_eval_samples", "7"]
    )
    assert (cfg.seed, cfg.learning_rate, cfg.checkpoint_every_steps, cfg.max_eval_samples) == (2**32 - 1, 3e-4, 500, 7)


@pytest.mark.parametrize("field", [f for f in _numeric_fields() if f.type.startswith("int")], ids=lambda f: f.name)
def test_every_integer_flag_says_an_integer_is_needed(capsys, field):
    """Issue 23, item 7: `2.5` for an integer flag is one line that says an integer is needed."""
    line = _parse_fails(capsys, parse_args, [f"--{field.name}", "2.5"], f"--{field.name}")
    assert f"--{field.name} must be an integer (ASCII digits), got '2.5'" in line


@pytest.mark.parametrize(
    "flag, needed",
    [("--flow_log_steps", "'auto' or an integer in 0.."), ("--checkpointing_steps", "'epoch', 'none' or an integer")],
)
def test_step_flags_say_an_integer_is_needed(capsys, flag, needed):
    line = _parse_fails(capsys, parse_args, [flag, "2.5"], flag)
    assert f"{flag} must be {needed}" in line and "got '2.5'" in line


@pytest.mark.parametrize(
    "argv, flag",
    [(["--num_train_ep", "3"], "--num_train_ep"), (["--learning", "0.1"], "--learning"), (["--see=3"], "--see")],
)
def test_abbreviated_flags_are_refused(capsys, argv, flag):
    """Issue 23, item 7: argparse took `--num_train_ep` for --num_train_epochs, so a typo could pick a flag."""
    line = _parse_fails(capsys, parse_args, argv, flag)
    assert "unrecognized arguments" in line


def test_other_commands_refuse_abbreviations_too(capsys):
    _parse_fails(capsys, flops_main, ["--num_cl", "3"], "--num_cl")
