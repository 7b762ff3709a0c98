"""lab2-eval, lab2-predict and lab2-report on a real finished run; the report rendered in headless Chromium;
lab2-eval, lab2-predict and lab2-export on a run stopped by SIGTERM."""

import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
from browser import Chromium
from conftest import (
    BIN,
    REPO,
    assert_clean_error,
    built_once,
    cli_env,
    fill_disk,
    run_cli,
    train_cmd,
    write_synthetic_folder,
)
from launch import free_port, started
from PIL import Image

from lab2.data.cifar_files import CIFAR10_CLASSES

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


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped by SIGTERM after its first checkpoint, as Ctrl-C stops one: checkpoints, no model.safetensors."""

    def build(root):
        data = write_synthetic_folder(root / "data", num_train=640, num_test=64)
        flags = ["--data_dir", data, "--output_dir", root / "run", "--num_train_epochs", 3, "--report_to", "none"]
        flags += ["--flow_log_steps", 0, "--num_prediction_samples", 0, "--checkpointing_steps", 2]
        env = cli_env(PATH=f"{BIN}:{cli_env()['PATH']}")
        with started(train_cmd(*flags), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
            deadline = time.time() + 240
            while not list((root / "run" / "checkpoints").glob("checkpoint_*")) and time.time() < deadline:
                assert proc.poll() is None, proc.communicate()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=120) == 3  # stopped, with the resume line

    return built_once(tmp_path_factory, "stopped_run", build)


def _checkpoint_accuracy(checkpoint, data_dir):
    """The test accuracy of a checkpoint's own weights, computed apart from lab2-eval."""
    from accelerate import Accelerator
    from safetensors.torch import load_file

    from lab2.data.cifar import read_cifar10_folder
    from lab2.data.device_dataset import DeviceDataset, device_dataloader
    from lab2.engine.evaluation import evaluate
    from lab2.models import create_model

    model = create_model("simple_cnn")
    model.load_state_dict(load_file(checkpoint / "model.safetensors"))
    splits = read_cifar10_folder(data_dir / "cifar-10-batches-py")
    loader = device_dataloader(DeviceDataset(splits.test_images, splits.test_labels, train=False), 256, shuffle=False)
    return evaluate(model.eval(), loader, Accelerator(cpu=True), splits.num_classes).accuracy


def test_a_stopped_run_is_evaluated_predicted_and_exported_from_its_checkpoint(stopped_run, tmp_path):
    run = stopped_run / "run"
    assert not (run / "model.safetensors").exists()
    checkpoint = sorted((run / "checkpoints").glob("checkpoint_*"))[-1]
    progress = json.loads((checkpoint / "progress.json").read_text())
    note = (
        f"lab2: no model.safetensors in {run} (the run did not finish); using checkpoints/{checkpoint.name} "
        f"(epoch {progress['epoch'] + 1}, batch {progress['batch_in_epoch']}, step {progress['global_step']})"
    )
    evaluated = run_cli([str(BIN / "lab2-eval"), "--model_path", run, "--output_dir", tmp_path / "eval"])
    assert evaluated.returncode == 0 and evaluated.stderr.splitlines() == [note], evaluated.stderr
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["accuracy"] == _checkpoint_accuracy(checkpoint, stopped_run / "data") and report["num_samples"] == 64
    image = tmp_path / "cat.png"
    Image.fromarray(np.full((32, 32, 3), 90, dtype=np.uint8)).save(image)
    predicted = run_cli([str(BIN / "lab2-predict"), "--model_path", run, "--json", image])
    assert predicted.returncode == 0 and predicted.stderr.splitlines() == [note], predicted.stderr
    assert json.loads(predicted.stdout)[0]["top_k"][0]["class"] in CIFAR10_CLASSES  # the run's data folder's names
    copy = tmp_path / "run"
    shutil.copytree(run, copy)  # the export goes beside the run folder: keep the shared one as it is
    exported = run_cli([str(BIN / "lab2-export"), copy])
    assert exported.returncode == 0 and f"wrote {copy}.safetensors" in exported.stdout, exported.stderr
    again = run_cli([str(BIN / "lab2-eval"), "--model_path", f"{copy}.safetensors", "--output_dir", tmp_path / "e2"])
    assert again.returncode == 0 and again.stderr == "", again.stderr  # a model file: no note
    assert json.loads((tmp_path / "e2" / "eval.json").read_text())["accuracy"] == report["accuracy"]


def test_one_checkpoint_of_a_run_is_evaluated_and_a_damaged_or_lone_one_is_one_line(
    stopped_run, tmp_path, capsys, monkeypatch
):
    """--model_path <run>/checkpoints/checkpoint_N reads that checkpoint with the run's config.json; it said "was not
    written by lab2" before, as its model.safetensors carries no export metadata."""
    from lab2.cli import eval as eval_cli
    from lab2.cli import predict as predict_cli
    from lab2.state.run_folder import remove_checkpoint_files

    run = tmp_path / "run"
    shutil.copytree(stopped_run / "run", run)
    checkpoint = sorted((run / "checkpoints").glob("checkpoint_*"))[0]
    step = json.loads((checkpoint / "progress.json").read_text())["global_step"]
    eval_cli.main(list(map(str, ["--model_path", checkpoint, "--output_dir", tmp_path / "eval"])))
    note = capsys.readouterr().err
    assert note.startswith(f"lab2: using checkpoints/{checkpoint.name} (") and f"step {step})" in note, note
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["accuracy"] == _checkpoint_accuracy(checkpoint, stopped_run / "data")
    # Relative, from inside the run: the default output is the checkpoint's eval/, which goes with the checkpoint
    # (a stale eval.json once stayed in a re-saved checkpoint of the same step).
    monkeypatch.chdir(run / "checkpoints")
    eval_cli.main(["--model_path", checkpoint.name])
    assert json.loads((checkpoint / "eval" / "eval.json").read_text())["accuracy"] == report["accuracy"]
    assert remove_checkpoint_files(checkpoint) and not checkpoint.exists()
    shutil.copytree(stopped_run / "run" / "checkpoints" / checkpoint.name, checkpoint)
    capsys.readouterr()
    lone = tmp_path / "lone" / "checkpoints" / checkpoint.name
    shutil.copytree(checkpoint, lone)
    listed = tmp_path / "listed"  # a config.json of another shape: one line, where it was an AttributeError
    shutil.copytree(run, listed)
    (listed / "config.json").write_text("[]")
    with open(checkpoint / "model.safetensors", "ab") as handle:
        handle.write(b"x")
    damaged = ["model.safetensors is", "bytes, the manifest says"]
    for path, fragments in (
        (checkpoint, damaged),
        (lone, ["config.json is missing", "inside its run folder"]),
        (listed / "checkpoints" / checkpoint.name, ["config.json is not a readable lab2 configuration"]),
    ):
        with pytest.raises(SystemExit) as exit_:
            predict_cli.main(list(map(str, ["--model_path", path, "x.png"])))
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and all(f in err for f in fragments), err


def test_a_run_without_checkpoint_or_model_and_a_folder_that_is_no_run_are_one_line(stopped_run, tmp_path, capsys):
    from lab2.cli import eval as eval_cli
    from lab2.cli import predict as predict_cli
    from lab2.cli.tools import export_main

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(stopped_run / "run" / "config.json", run)  # a run stopped before its first save
    no_run = stopped_run / "data"
    for main, args, fragments in (
        (eval_cli.main, ["--model_path", run], ["no complete checkpoint", "train it again"]),
        (predict_cli.main, ["--model_path", run, "x.png"], ["no complete checkpoint", "train it again"]),
        (eval_cli.main, ["--model_path", no_run], ["not a lab2 run folder", "config.json", "checkpoints/"]),
        (export_main, [no_run], ["not a lab2 run folder", "config.json", "checkpoints/"]),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(list(map(str, args)))
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and err.count("\n") == 1 and "error:" in err, err
        assert all(fragment in err for fragment in fragments), err


def test_a_full_disk_is_one_line_for_every_command_and_leaves_no_part_of_a_file(run_dir, small_disk):
    """lab2-eval, lab2-export, lab2-report and examples/sample_images.py on a full disk (issue 23, item 3): one line
    naming the folder, exit code 6 (the README's), no traceback, no temporary or partial file."""
    fill_disk(small_disk)
    commands = {
        "eval": [BIN / "lab2-eval", "--model_path", run_dir, "--output_dir", small_disk / "eval"],
        "export": [BIN / "lab2-export", run_dir, "--output", small_disk / "model.safetensors"],
        "report": [BIN / "lab2-report", run_dir, "--output", small_disk / "report.html"],
        "samples": [BIN / "python", REPO / "examples" / "sample_images.py", "--data_dir", run_dir.parent / "data",
                    "--output", small_disk / "samples"],
    }  # fmt: skip
    for name, command in commands.items():
        result = run_cli(command)
        assert_clean_error(result, "disk holding", "is full")
        assert result.returncode == 6, (name, result.stderr)
    left = sorted(str(p.relative_to(small_disk)) for p in small_disk.rglob("*") if p.is_file())
    assert all(p == "filler" or p.startswith("eval/") and "tmp" not in p for p in left), left  # eval's marker at most
    assert not (small_disk / "report.html").exists() and not (small_disk / "model.safetensors").exists()


def test_a_run_whose_report_cannot_be_written_is_not_marked_finished(run_dir, small_disk):
    """summary.json marks a run finished; when report.html then finds the disk full, summary.json goes again."""
    from lab2.engine.results import mark_finished
    from lab2.errors import DiskFull
    from lab2.state.run_folder import RunPaths

    run = small_disk / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("checkpoints", "*.safetensors", "report.html"))
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").unlink()
    fill_disk(small_disk, leave_bytes=64 * 1024)  # room for summary.json, not for the report's embedded figures
    with pytest.raises(DiskFull, match="report.html"):
        mark_finished(RunPaths(run), summary)
    assert not (run / "summary.json").exists() and not (run / "report.html").exists()
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]
