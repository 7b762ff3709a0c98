"""The recipe flags inside real training runs: schedule per optimizer step, step evaluations, drop_last, no eval."""

import json

import pytest
import torch
from conftest import run_cli, train_cmd
from torch.optim.lr_scheduler import OneCycleLR

TINY = [
    "--dataset",
    "fake",
    "--fake_train_samples",
    200,
    "--fake_test_samples",
    64,
    "--per_device_train_batch_size",
    64,
    "--num_train_epochs",
    2,
    "--report_to",
    "none",
    "--flow_log_steps",
    0,
    "--num_prediction_samples",
    0,
    "--checkpointing_steps",
    "none",
]


def records(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def one_cycle_lrs(peak: float, total: int, pct_start: float) -> list[float]:
    """torch's OneCycleLR rate after each of `total` steps."""
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=peak)
    scheduler = OneCycleLR(optimizer, max_lr=peak, total_steps=total, pct_start=pct_start)
    out = []
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        out.append(scheduler.get_last_lr()[0])
    return out


@pytest.mark.slow
def test_fast_recipe_run_steps_its_schedule_and_evaluates_every_n_steps(tmp_path):
    out = tmp_path / "fast"
    result = run_cli(
        train_cmd(
            *TINY,
            "--data_dir",
            tmp_path / "data",
            "--output_dir",
            out,
            "--recipe",
            "fast",
            "--num_train_epochs",
            2,
            "--per_device_train_batch_size",
            64,
            "--eval_strategy",
            "steps",
            "--eval_steps",
            2,
            "--dataloader_drop_last",
        )
    )
    assert result.returncode == 0, result.stderr + result.stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["optim"], config["lr_scheduler_type"], config["tta"], config["label_smoothing_factor"]) == (
        "adamw",
        "one_cycle",
        True,
        0.1,
    )
    assert config["num_train_epochs"] == 2  # the explicit flag beat the recipe's epochs
    metrics = records(out)
    # drop_last: 200 images in batches of 64 are 3 full batches per epoch, not 4.
    assert [m["global_step"] for m in metrics] == [3, 6]
    # The logged rate is torch's OneCycleLR after that many optimizer steps of a 6-step schedule.
    expected = one_cycle_lrs(config["learning_rate"], 6, config["warmup_ratio"] or 0.3)
    assert [m["lr"] for m in metrics] == pytest.approx([expected[2], expected[5]], rel=1e-9)
    assert [line.split(":")[0] for line in result.stdout.splitlines() if line.startswith("step ")] == [
        "step 2",
        "step 4",
        "step 6",
    ]
    assert all(m["eval_acc"] is not None for m in metrics)  # each epoch record carries the latest evaluation


@pytest.mark.slow
def test_eval_strategy_no_evaluates_only_at_the_end(tmp_path):
    out = tmp_path / "no-eval"
    result = run_cli(
        train_cmd(
            *TINY,
            "--data_dir",
            tmp_path / "data",
            "--output_dir",
            out,
            "--eval_strategy",
            "no",
            "--lr_scheduler_type",
            "linear",
            "--num_train_epochs",
            2,
        )
    )
    assert result.returncode == 0, result.stderr + result.stdout
    first, last = records(out)
    assert first["eval_acc"] is None and first["eval_loss"] is None and last["eval_acc"] is not None
    assert last["lr"] == 0.0 and first["lr"] == pytest.approx(
        1e-3 / 2
    )  # linear decay to 0 over 8 steps, logged after 4
    log = [line for line in (out / "training_log.txt").read_text().splitlines() if "|" in line or "+" in line]
    assert log[2].split("|")[3].strip() == "-" and "%" in log[3].split("|")[4]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["best_eval_acc"] == summary["final_eval_acc"] == last["eval_acc"]
    assert (out / "figures" / "curves.png").exists()
