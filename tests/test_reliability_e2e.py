"""Issue 11 end to end, through the real program: a user's files are never touched, damaged checkpoints and
torn logs are skipped, settings that move a mid-epoch position are refused, a full disk is one line and exit 5,
and a signal during the final files is reported. One tiny finished run serves most cases (copied per test)."""

import json
import shutil
import signal
import subprocess

import pytest
from conftest import BIN, REPO, assert_clean_error, built_once, cli_env, run_cli, train_cmd

pytestmark = pytest.mark.slow

TINY = [
    "--dataset",
    "fake",
    "--fake_train_samples",
    256,
    "--fake_test_samples",
    64,
    "--per_device_train_batch_size",
    64,
    "--num_train_epochs",
    1,
    "--report_to",
    "none",
    "--flow_log_steps",
    2,
    "--checkpointing_steps",
    2,
    "--checkpoints_total_limit",
    3,
]


def tiny(data, *flags):
    return train_cmd("--data_dir", data, *TINY, *flags)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 1-epoch run with checkpoints at steps 2 (mid-epoch) and 4 (its end)."""

    def build(root):
        result = run_cli(tiny(root / "data", "--output_dir", root / "run"))
        assert result.returncode == 0, result.stdout + result.stderr

    root = built_once(tmp_path_factory, "reliability_finished", build)
    return root / "data", root / "run"


def _copy(finished, tmp_path):
    data, run = finished
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    return data, copy


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_overwrite_knows_every_file_a_run_writes(finished):
    """--overwrite_output_dir removes by name: every file of a real run must be on lab2's list (a new figure too)."""
    from lab2.state.run_folder import LOCK, MARKER, owned_files

    _, run = finished
    owned = owned_files(run)
    unknown = [
        p
        for p in run.rglob("*")
        if p.is_file() and p.name not in (MARKER, LOCK) and not any(p == o or o in p.parents for o in owned)
    ]
    assert not unknown, f"files a run writes that --overwrite_output_dir would leave behind: {unknown}"


def test_a_folder_lab2_did_not_start_is_refused_and_untouched(finished, tmp_path):
    data, _ = finished
    out = tmp_path / "mine"
    (out / "figures").mkdir(parents=True)
    (out / "config.json").write_text('{"mine": true}')
    (out / "report.html").write_text("<p>my report</p>")
    (out / "figures" / "curves.png").write_bytes(b"my png")
    before = _files(out)
    for extra in ([], ["--overwrite_output_dir"]):
        result = run_cli(tiny(data, "--output_dir", out, *extra))
        assert_clean_error(result, "not a lab2 run folder")
        assert result.returncode == 2 and _files(out) == before


def test_overwrite_keeps_user_files_everywhere_and_a_signal_while_finishing_is_reported(finished, tmp_path):
    """--overwrite_output_dir on lab2's own run removes only lab2's files;
    SIGTERM after the last step is said, exit 0."""
    data, out = _copy(finished, tmp_path)
    mine = {}
    for sub in (".", "figures", "checkpoints", "wandb", "tensorboard", "eval", "checkpoints/checkpoint_00000004"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        (out / sub / "my_notes.txt").write_text(f"mine in {sub}")
        mine[(out / sub / "my_notes.txt").relative_to(out)] = f"mine in {sub}".encode()
    env = cli_env()
    env["PATH"] = f"{BIN}:{env['PATH']}"
    proc = subprocess.Popen(
        tiny(data, "--output_dir", out, "--overwrite_output_dir"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith(
            "epoch 1/1: train loss"
        ):  # the last step is done: the final checkpoint, weights, figures and report follow
            proc.send_signal(signal.SIGTERM)
            break
    output = "".join(lines) + proc.stdout.read()
    assert proc.wait(timeout=300) == 0, output
    assert "SIGTERM received while finishing; the run is complete" in output
    now = _files(out)
    assert all(now.get(name) == content for name, content in mine.items())
    assert (out / "summary.json").is_file() and (out / "report.html").is_file()


def test_resume_skips_a_damaged_checkpoint_and_torn_log_lines(finished, tmp_path):
    data, out = _copy(finished, tmp_path)
    (out / "summary.json").unlink()
    (out / "checkpoints" / "checkpoint_00000004" / "model.safetensors").write_bytes(b"garbage" * 100)
    for name in ("metrics.jsonl", "flow.jsonl"):
        with open(out / name, "a") as handle:
            handle.write('{"epoch": 2, "train_lo')
    result = run_cli(tiny(data, "--output_dir", out, "--resume_from_checkpoint", "latest"))
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Traceback" not in output, output
    skipped = [line for line in output.splitlines() if "skipped 1 damaged checkpoint" in line]
    assert len(skipped) == 1 and "checkpoint_00000004" in skipped[0] and "model.safetensors" in skipped[0], output
    assert "resumed from" in output and "checkpoint_00000002" in output
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    report = run_cli([str(BIN / "lab2-report"), str(out)])
    assert report.returncode == 0, report.stderr


@pytest.mark.parametrize(
    "flags, fragments",
    [
        (
            ["--resume_from_checkpoint", "{run}/checkpoints/checkpoint_00000002", "--per_device_train_batch_size", 32],
            ["--per_device_train_batch_size 64 -> 32", "mid-epoch"],
        ),
        (["--resume_from_checkpoint", "{run}/checkpoints/checkpoint_00000004"], ["optimizer.bin", "damaged"]),
    ],
    ids=["batch-size-mid-epoch", "explicit-damaged"],
)
def test_resume_refusals_are_one_line(finished, tmp_path, flags, fragments):
    data, out = _copy(finished, tmp_path)
    (out / "checkpoints" / "checkpoint_00000004" / "optimizer.bin").write_bytes(b"")
    result = run_cli(tiny(data, "--output_dir", tmp_path / "new", *[str(f).format(run=out) for f in flags]))
    assert_clean_error(result, *fragments)
    assert result.returncode == 2


def test_a_full_disk_is_one_line_naming_the_last_good_checkpoint(finished, tmp_path):
    data, _ = finished
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=60m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'}); the full-disk case needs root"
        )
    try:  # one checkpoint (~53 MB) fits in 60 MB, the second does not
        result = run_cli(tiny(data, "--output_dir", mount / "run"))
        assert_clean_error(result, "disk is full", "checkpoint_00000002", "--resume_from_checkpoint latest")
        assert result.returncode == 6
        assert sorted(p.name for p in (mount / "run" / "checkpoints").iterdir()) == ["checkpoint_00000002"]
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
