"""The figures and messages of the short runs newcomers make: flow snapshots by default ("auto"), the bar's loss
in the first epoch, the final lines that point at the report and the next commands, and the report of an
unfinished run."""

import os
import re
import signal
import subprocess
import time

import pytest
from conftest import BIN, REPO, cli_env, run_cli, train_cmd

from lab2.flags import parse_args

pytestmark = pytest.mark.slow

SHORT = ["--max_train_samples", 640, "--per_device_train_batch_size", 64, "--max_eval_samples", 128]
SHORT += ["--report_to", "none"]
HEATMAPS = ("grad_mean", "weight_mean", "update_ratio")


@pytest.mark.parametrize(
    ("flag", "total_steps", "every"),
    [("auto", 80, 10), ("auto", 30 * 391, 235), ("auto", 3, 10), ("7", 80, 7), ("0", 80, 0)],
)
def test_flow_log_steps_auto_aims_at_50_snapshots_at_least_10_steps_apart(flag, total_steps, every):
    assert parse_args(["--flow_log_steps", flag]).flow_every_steps(total_steps) == every


def test_a_short_run_shows_its_loss_early_has_flow_snapshots_and_ends_with_the_next_commands(mini_dir, tmp_path):
    out = tmp_path / "short"
    env = cli_env()
    env.pop("TQDM_DISABLE")
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    flags = [*SHORT, "--data_dir", mini_dir, "--num_train_epochs", 2, "--output_dir", out]
    result = run_cli(train_cmd(*flags), env=env)  # --flow_log_steps auto, --logging_steps 50 > 10 steps per epoch
    assert result.returncode == 0, result.stderr
    # The bar shows a loss before the epoch's end although the first --logging_steps interval never comes.
    early = [int(n) for n in re.findall(r"\| *([0-9]+)/10 \[[^\]]*loss=", result.stderr)]
    assert early and min(early) < 10, result.stderr[-2000:]
    assert len((out / "flow.jsonl").read_text().splitlines()) == 2  # steps 10 and 20 of 20 (auto: every 10)
    lines = result.stdout.splitlines()
    done = next(i for i, line in enumerate(lines) if line.startswith("done: final eval accuracy"))
    after = "\n".join(lines[done + 1 :])
    assert f"{out / 'report.html'}" in after and f"lab2-eval --model_path {out}" in after
    assert f"lab2-predict --model_path {out}" in after


def test_the_report_of_an_unfinished_run_draws_its_curves_and_flow_and_says_it_is_unfinished(mini_dir, tmp_path):
    out = tmp_path / "stopped"
    env = cli_env()
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    flags = [*SHORT, "--data_dir", mini_dir, "--num_train_epochs", 3, "--flow_log_steps", 2, "--output_dir", out]
    proc = subprocess.Popen(
        train_cmd(*flags), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.time() + 240
        metrics = out / "metrics.jsonl"
        while proc.poll() is None and time.time() < deadline and not (metrics.exists() and metrics.read_text()):
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3 and not (out / "summary.json").exists()
    result = run_cli([str(BIN / "lab2-report"), str(out)])
    assert result.returncode == 0, result.stderr
    page = (out / "report.html").read_text()
    assert "<b>Unfinished run</b>" in page and "epochs done" in page
    assert "alt='curves'" in page and "per epoch so far (unfinished run)" in page
    assert "n/a x?" not in page
    # The header says where it ran and how long, from the epoch records (summary.json comes at the end).
    assert "device <b>cpu x1, fp32</b>" in page and re.search(r"wall time <b>[0-9]+\.[0-9] min</b> so far", page)
    # The flow charts and heatmaps come from flow.jsonl (issue 22): figures/ is written only at the end.
    assert not (out / "figures").exists() and (out / "flow.jsonl").read_text()
    drawn = re.findall(r"<img alt='(\w+)'", page)
    assert drawn == ["curves", "gradients", "weights", "update_ratio", *(f"heatmap_{s}" for s in HEATMAPS)], drawn
