"""Issue 16, section 2: one write policy for every command. Each command meets a folder holding user files under
every name it writes; they must survive byte for byte, and the refusal is one line with exit code 2.

One real tiny run with W&B (offline), MLflow and TensorBoard serves every case; each test works on a copy."""

import json
import shutil

import pytest
import torch
from conftest import BIN, assert_clean_error, built_once, run_cli, train_cmd

import lab2
from lab2.cli import eval as eval_cli
from lab2.cli.tools import export_main, report_main
from lab2.models import create_model
from lab2.state.run_folder import MARKER, claim, owned_files, record_tracker_files, remove_owned_files

pytestmark = pytest.mark.slow

TINY = ["--dataset", "fake", "--fake_train_samples", 128, "--fake_test_samples", 32]
TINY += ["--per_device_train_batch_size", 32, "--num_train_epochs", 1, "--flow_log_steps", 2]


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    def build(root):
        flags = ["--data_dir", root / "data", "--output_dir", root / "run", *TINY]
        result = run_cli(train_cmd(*flags, "--report_to", "wandb,mlflow,tensorboard"), timeout=600)
        assert result.returncode == 0, result.stdout + result.stderr

    root = built_once(tmp_path_factory, "write_policy_tracked", build)
    return root / "data", root / "run"


@pytest.fixture
def run_copy(tracked_run, tmp_path):
    data, run = tracked_run
    shutil.copytree(run, tmp_path / "run", symlinks=True)
    return data, tmp_path / "run"


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}


def _plant(folder, names):
    """A user's file under each name (relative to `folder`); returns {path: bytes} to compare with later."""
    planted = {}
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"the user's own {name}\n".encode())
        planted[path] = path.read_bytes()
    return planted


def _survived(planted):
    return all(path.is_file() and path.read_bytes() == content for path, content in planted.items())


def _exit(capsys, main, argv):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return exit_info.value.code, [line for line in captured.err.splitlines() if "error:" in line]


def test_overwrite_removes_the_files_lab2s_trackers_wrote_and_keeps_the_users(run_copy):
    data, run = run_copy
    wandb_run = next((run / "wandb").glob("offline-run-*"))
    mlflow_run_id = json.loads((run / "mlflow_run.json").read_text())["id"]
    mlflow_run = next((run / "mlruns").glob(f"*/{mlflow_run_id}"))
    experiment = mlflow_run.parent.relative_to(run)
    mine = [f"{wandb_run.relative_to(run)}/{name}" for name in ("notes.txt", "files/notes.txt", "logs/mine.log")]
    mine += [f"{wandb_run.relative_to(run)}/files/media/images/my_plot.png", "wandb/notes.txt", "mlruns/notes.txt"]
    mine += [f"{experiment}/notes.txt", f"{mlflow_run.relative_to(run)}/notes.txt"]
    mine += [f"{mlflow_run.relative_to(run)}/{name}" for name in ("metrics/notes.txt", "artifacts/my_plot.png")]
    mine += [f"{mlflow_run.relative_to(run)}/params/my_param", "tensorboard/notes.txt"]
    planted = _plant(run, mine)
    tracker_files = [p for p in owned_files(run) if p.parts[len(run.parts)] in ("wandb", "mlruns", "tensorboard")]
    assert len(tracker_files) > 20 and (run / "mlflow_run.json").is_file()

    result = run_cli(
        train_cmd("--data_dir", data, "--output_dir", run, *TINY, "--report_to", "none", "--overwrite_output_dir")
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert _survived(planted)
    assert not any(p.exists() for p in tracker_files)  # the old run's W&B, MLflow and TensorBoard files are gone
    # no MLflow run id left behind: a later --report_to mlflow resume starts a new MLflow run, not the old one's
    assert not (run / "mlflow_run.json").exists() and not (mlflow_run / "meta.yaml").exists()
    assert (run / "summary.json").is_file()


def test_the_trackers_files_are_the_ones_that_appeared_while_they_ran(tmp_path):
    """No tracker's file names are known: lab2 lists what appeared in wandb/, mlruns/ and tensorboard/ between
    claim (the run's start) and record_tracker_files (its trackers closed). Files there before, files put there
    after, a link to elsewhere and a hand-edited marker are never the trackers'."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    planted = _plant(elsewhere, ["notes.txt"])
    claim(run)
    planted |= _plant(run, ["wandb/before.txt"])  # put there between two runs: the next run's claim notes it
    claim(run)
    written = ["wandb/offline-run-1/files/any-name.log", "mlruns/0/abc/meta.yaml", "tensorboard/x/events"]
    _plant(run, written)
    (run / "wandb" / "latest-run").symlink_to(run / "wandb" / "offline-run-1")
    record_tracker_files(run)
    planted |= _plant(run, ["wandb/offline-run-1/files/mine.txt", "mlruns/0/abc/mine.txt", "tensorboard/mine"])
    (run / "mlruns" / "linked").symlink_to(elsewhere)
    marker = json.loads((run / MARKER).read_text())
    marker["tracker_files"] += ["mlruns/linked/notes.txt", "wandb/../../elsewhere/notes.txt", "config.json"]
    (run / MARKER).write_text(json.dumps(marker))
    expected = {run / name for name in (*written, "wandb/latest-run")}
    assert set(owned_files(run)) == expected
    assert set(remove_owned_files(run)) == expected
    assert _survived(planted) and not any(p.exists() or p.is_symlink() for p in expected)
    claim(run)  # the next run: what is left in the tracker folders is someone else's
    record_tracker_files(run)
    assert owned_files(run) == []


def test_lab2_eval_never_writes_over_a_users_files(run_copy, tmp_path, capsys):
    _, run = run_copy
    names = ["eval.json", "predictions.png", "confusion_matrix.png", "class_accuracy.png"]
    planted = _plant(run, names)  # at the top of the run folder, where --output_dir <run> would write them
    planted |= _plant(run / "eval", names)  # the default <run>/eval, made by the user, not by lab2-eval
    for out in (run, run / "eval"):
        code, lines = _exit(capsys, eval_cli.main, ["--model_path", str(run), "--output_dir", str(out)])
        assert code == 2 and len(lines) == 1 and str(out) in lines[0], lines
    assert (
        "a lab2 training run's folder"
        in _exit(capsys, eval_cli.main, ["--model_path", str(run), "--output_dir", str(run)])[1][0]
    )
    assert _survived(planted)
    # its own folder, it may write again: twice into one new folder
    out = tmp_path / "my_eval"
    for _ in range(2):
        eval_cli.run_eval(eval_cli.build_parser().parse_args(["--model_path", str(run), "--output_dir", str(out)]))
    assert json.loads((out / "eval.json").read_text())["num_samples"] == 32


def test_a_training_run_is_never_started_in_a_lab2_eval_folder(run_copy, tmp_path):
    _, run = run_copy
    out = tmp_path / "ev"
    eval_cli.run_eval(eval_cli.build_parser().parse_args(["--model_path", str(run), "--output_dir", str(out)]))
    before = _files(out)
    for extra in ({}, {"overwrite_output_dir": True}):
        with pytest.raises(ValueError, match="is a lab2-eval output folder"):
            lab2.train(output_dir=out, dataset="fake", report_to="none", fake_train_samples=64, **extra)
    assert _files(out) == before


@pytest.fixture
def lab_weights(tmp_path):
    path = tmp_path / "lab" / "model_final.pth"
    path.parent.mkdir()
    torch.save(create_model("simple_cnn", 10).state_dict(), path)
    return path


def test_lab2_export_replaces_only_its_own_files(lab_weights, run_copy, capsys):
    _, run = run_copy
    folder = lab_weights.parent
    planted = _plant(folder, ["model.safetensors", "notes.txt", ".model.safetensors.tmp", ".mine.safetensors.tmp"])
    cases = [
        ([], "model.safetensors exists and is not a file lab2-export wrote"),  # the default output, beside the source
        (["--output", str(folder / "notes.txt")], "notes.txt exists and is not a file lab2-export wrote"),
        (["--output", str(folder / "missing" / "x.safetensors")], "does not exist; create it first"),
        (["--output", str(folder)], "is a folder; give a file name"),
    ]
    for extra, fragment in cases:
        code, lines = _exit(capsys, export_main, [str(lab_weights), *extra])
        assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    # a training run's own model.safetensors is lab2's, but not lab2-export's to replace
    shutil.copy(lab_weights, run / "model_final.pth")
    model_before = (run / "model.safetensors").read_bytes()
    code, lines = _exit(capsys, export_main, [str(run / "model_final.pth")])
    assert (
        code == 2
        and "is not a file lab2-export wrote" in lines[0]
        and (run / "model.safetensors").read_bytes() == model_before
    )
    # a new file, then the same file again: lab2-export's own file may be replaced
    for _ in range(2):
        export_main([str(lab_weights), "--output", str(folder / "mine.safetensors")])
    assert "wrote" in capsys.readouterr().out
    assert _survived(planted) and not (folder / "missing").exists()


def test_lab2_export_into_a_missing_folder_is_one_line_not_a_traceback(lab_weights):
    result = run_cli(
        [str(BIN / "lab2-export"), str(lab_weights), "--output", str(lab_weights.parent / "no" / "m.safetensors")]
    )
    assert_clean_error(result, "does not exist; create it first")
    assert result.returncode == 2


def test_lab2_report_replaces_only_its_own_pages(run_copy, tmp_path, capsys):
    _, run = run_copy
    folder = tmp_path / "pages"
    planted = _plant(folder, ["mine.html", ".page.html.tmp", ".mine.html.tmp"])
    for output, fragment in (
        (folder / "mine.html", "mine.html exists and is not a file lab2-report wrote"),
        (folder / "no" / "page.html", "does not exist; create it first"),
        (folder, "is a folder; give a file name"),
    ):
        code, lines = _exit(capsys, report_main, [str(run), "--output", str(output)])
        assert code == 2 and len(lines) == 1 and fragment in lines[0], lines
    for _ in range(2):  # a new page, then lab2's own page again
        report_main([str(run), "--output", str(folder / "page.html")])
    report_main([str(run)])  # the run's own report.html, in the folder lab2 marked
    assert _survived(planted) and (folder / "page.html").read_text().startswith("<!DOCTYPE html>")


def test_overwrite_keeps_the_files_of_an_eval_folder_lab2_eval_did_not_mark(tmp_path):
    """Found by a hostile try: a user's own eval/ (no marker) lost its eval.json to --overwrite_output_dir."""
    from lab2.state.run_folder import claim, remove_owned_files

    root = tmp_path / "run"
    claim(root)
    (root / "eval").mkdir()
    for name in ("eval.json", "mine.txt"):
        (root / "eval" / name).write_text("the user's")
    remove_owned_files(root)
    assert sorted(p.name for p in (root / "eval").iterdir()) == ["eval.json", "mine.txt"]
    claim(root / "eval", "eval")  # lab2-eval's folder: its own files go, the user's stay
    remove_owned_files(root)
    assert sorted(p.name for p in (root / "eval").iterdir()) == ["mine.txt"]
