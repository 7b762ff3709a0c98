"""lab2-eval, lab2-predict and lab2-report on a real finished run; the report rendered in headless Chromium."""

import json

import numpy as np
import pytest
from browser import Chromium
from conftest import (
    BIN,
    assert_clean_error,
    built_once,
    cli_env,
    run_cli,
    train_cmd,
    write_synthetic_folder,
)
from launch import free_port
from PIL import Image

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    def build(root):
        data = write_synthetic_folder(root / "data", num_train=640, num_test=203)
        flags = ["--data_dir", data, "--output_dir", root / "run", "--num_train_epochs", 2]
        result = run_cli(train_cmd(*flags, "--report_to", "none", "--flow_log_steps", 2))
        assert result.returncode == 0, result.stderr

    return built_once(tmp_path_factory, "tools_run", build) / "run"


def test_eval_reproduces_the_runs_final_accuracy(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    result = run_cli(
        [str(BIN / "lab2-eval"), "--model_path", run_dir / "model.safetensors", "--output_dir", tmp_path / "eval"]
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["accuracy"] == summary["final_eval_acc"] and report["num_samples"] == 203
    assert abs(report["ece"] - summary["final_eval_ece"]) < 1e-6  # the same logits, so the same calibration
    assert f"accuracy: {100 * summary['final_eval_acc']:.2f}%" in result.stdout and "airplane" in result.stdout
    # Exactly the files --overwrite_output_dir removes from a run's eval/ by name: one it did not know (calibration.png
    # once) outlived the overwrite, without the marker, and the next lab2-eval refused the folder.
    from lab2.state.run_folder import EVAL_FILES, MARKER

    assert {p.name for p in (tmp_path / "eval").iterdir()} == {*EVAL_FILES, MARKER}


def test_eval_on_two_processes_matches_too(run_dir, tmp_path):
    summary = json.loads((run_dir / "summary.json").read_text())
    torchrun = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", free_port(), "-m", "lab2.cli.eval"]
    result = run_cli(
        [*torchrun, "--model_path", str(run_dir), "--output_dir", str(tmp_path / "eval2")],
        env=cli_env(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval2" / "eval.json").read_text())
    assert report["num_samples"] == 203 and report["accuracy"] == summary["final_eval_acc"]
    assert abs(report["ece"] - summary["final_eval_ece"]) < 1e-6  # exact over processes: gathered confidences
    assert result.stdout.count("accuracy:") == 1


def test_eval_with_a_missing_model_is_one_clear_line(tmp_path):
    result = run_cli([str(BIN / "lab2-eval"), "--model_path", tmp_path / "nothing"])
    assert_clean_error(result, "no such file")


def test_predict_prints_top3_and_survives_a_bad_image(run_dir, tmp_path):
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 200, 3), dtype=np.uint8)).save(big)
    small = tmp_path / "small.jpg"
    Image.fromarray(np.full((32, 32, 3), 120, dtype=np.uint8)).save(small)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    result = run_cli([str(BIN / "lab2-predict"), "--model_path", run_dir, big, broken, small])
    assert result.returncode == 1  # one image failed, the others were predicted
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{big}: ") and lines[0].count("%") == 3 and lines[1].startswith(f"{small}: ")
    assert "Traceback" not in result.stderr and "broken.png: not a readable image" in result.stderr
    as_json = run_cli([str(BIN / "lab2-predict"), "--model_path", run_dir, "--json", big, small])
    assert as_json.returncode == 0
    records = json.loads(as_json.stdout)
    assert [len(r["top_k"]) for r in records] == [3, 3]
    assert all(abs(sum(t["probability"] for t in r["top_k"])) <= 1.0 + 1e-6 for r in records)


def test_report_holds_every_section(run_dir):
    page = (run_dir / "report.html").read_text()  # written automatically at the end of training
    for fragment in (
        "Training log",
        "FLOPs per layer",
        "161,163,264",
        "Configuration",
        "--learning_rate",
        "Accuracy per class",
    ):
        assert fragment in page
    assert page.count("data:image/png;base64,") == 12 and "src='http" not in page and 'src="http' not in page
    result = run_cli([str(BIN / "lab2-report"), str(run_dir)])
    assert result.returncode == 0 and result.stdout.strip().endswith("report.html")


@pytest.mark.browser
def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    chromium = Chromium(tmp_path)
    page = run_dir / "report.html"
    images, height = chromium.images_and_height(page)
    assert images == "images=12 loaded=12" and height > 2000  # every figure decoded; a long, non-empty page
    assert chromium.screenshot_contrast(page, tmp_path / "report.png") > 10  # not a blank page
    pdf = tmp_path / "report.pdf"
    chromium.run(f"--print-to-pdf={pdf}", page.as_uri())
    assert pdf.read_bytes()[:5] == b"%PDF-" and pdf.stat().st_size > 50_000
