"""`lab2-report RUN_A RUN_B ... --output compare.html` on real runs: content, refusals, the write policy, Chromium."""

import json
import re
import shutil

import numpy as np
import pytest
from browser import Chromium
from conftest import BIN, assert_clean_error, built_once, run_cli, train_cmd, write_synthetic_folder

from lab2.explain.plots import comparison_curves_figure, confusion_matrices_figure
from lab2.report.pages import read_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished 2-epoch runs that differ in --learning_rate and --seed, and a copy of the second with no
    summary.json: what a run still training looks like."""

    def build(root):
        data = write_synthetic_folder(root / "data", num_train=256, num_test=128)
        for name, lr, seed in (("base", "1e-3", 0), ("faster", "3e-3", 1)):
            flags = ["--data_dir", data, "--output_dir", root / name, "--run_name", name, "--num_train_epochs", 2]
            flags += ["--learning_rate", lr, "--seed", seed, "--report_to", "none", "--flow_log_steps", 0]
            result = run_cli(train_cmd(*flags))
            assert result.returncode == 0, result.stderr
        shutil.copytree(root / "faster", root / "running")
        (root / "running" / "summary.json").unlink()

    root = built_once(tmp_path_factory, "compare_runs", build)
    return [root / "base", root / "faster", root / "running"]


def _compare(*args):
    return run_cli([str(BIN / "lab2-report"), *map(str, args)])


def test_the_page_holds_metrics_only_the_differing_flags_and_every_confusion_matrix(runs, tmp_path):
    base, faster, running = runs
    page_file = tmp_path / "compare.html"
    result = _compare(base, faster, running, "--output", page_file)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(page_file)
    page = page_file.read_text()
    differences = page.split("<h2>Configuration differences</h2>")[1].split("<h2>")[0]
    flags = {cell.split("<")[0] for cell in differences.split("<td class='l'>--")[1:]}
    assert flags == {"learning_rate", "seed", "output_dir", "run_name"}, flags
    for name in ("base", "faster"):
        summary = json.loads((runs[["base", "faster"].index(name)] / "summary.json").read_text())
        assert f"{100 * summary['final_eval_acc']:.2f}%" in page
    assert "not finished (running or stopped)" in page  # the copy without summary.json
    assert "No confusion matrix yet (summary.json is written at the end): running" in page
    assert page.count("data:image/png;base64,") == 2 and "src='http" not in page  # curves, confusion matrices
    # The runs all share run_name 'faster' with the copy: labels fall back to the folder name, so columns differ.
    assert "<th class=''>base</th><th class=''>faster</th><th class=''>running</th>" in page


def test_the_wall_time_axis_is_the_running_sum_of_epoch_times(runs):
    run = read_run(runs[0])
    fig = comparison_curves_figure([(run.label, run.metrics)])
    wall_time_eval = fig.axes[2].lines[0]  # loss against training time, eval
    expected = np.cumsum([m["epoch_time_s"] for m in run.metrics]) / 60
    assert np.allclose(wall_time_eval.get_xdata(), expected)
    assert np.allclose(wall_time_eval.get_ydata(), [m["eval_loss"] for m in run.metrics])
    assert list(fig.axes[0].lines[0].get_xdata()) == [1, 2]


def test_folders_that_are_not_lab2_runs_are_refused_in_one_line(runs, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    other_tool = tmp_path / "bert"
    other_tool.mkdir()
    (other_tool / "config.json").write_text('{"architectures": ["BertModel"]}')
    damaged = tmp_path / "damaged"
    shutil.copytree(runs[0], damaged)
    (damaged / "config.json").write_text('{"model": "simple_cnn", "num_tr')
    out = tmp_path / "c.html"
    assert_clean_error(_compare(runs[0], empty, "--output", out), "empty is not a lab2 run folder")
    assert_clean_error(_compare(runs[0], other_tool, "--output", out), "is not a lab2 run", "'model'")
    assert_clean_error(_compare(runs[0], damaged, "--output", out), "config.json is damaged")
    assert_clean_error(_compare(runs[0], runs[0] / "summary.json", "--output", out), "is not a folder")
    assert_clean_error(_compare(runs[0], f"{runs[0]}/", "--output", out), "more than once")
    assert_clean_error(_compare(runs[0], runs[1]), "needs --output")
    assert not out.exists()
    # One run: the same refusals, and no report.html left in another tool's folder.
    assert_clean_error(_compare(other_tool), "is not a lab2 run", "'model'", "give the --output_dir of a lab2")
    assert_clean_error(_compare(empty), "empty is not a lab2 run folder (no config.json)")
    assert sorted(p.name for p in other_tool.iterdir()) == ["config.json"] and not list(empty.iterdir())


def test_output_never_replaces_a_file_lab2_did_not_write(runs, tmp_path):
    mine = tmp_path / "notes.html"
    mine.write_text("my notes")
    assert_clean_error(_compare(runs[0], runs[1], "--output", mine), "is not a file lab2-report wrote")
    assert mine.read_text() == "my notes"
    config = runs[0] / "config.json"
    before = config.read_bytes()
    assert_clean_error(_compare(runs[0], runs[1], "--output", config), "must be an .html file")
    assert config.read_bytes() == before
    # Its own page it may write again: the second comparison replaces the first. A file named like a temporary
    # one is the user's too: the temporary file gets a fresh name.
    page = tmp_path / "compare.html"
    lookalike = tmp_path / ".compare.html.tmp"
    lookalike.write_text("mine")
    assert _compare(runs[0], runs[1], "--output", page).returncode == 0
    assert _compare(runs[1], runs[0], "--output", page).returncode == 0
    assert page.read_text().index("<th class=''>faster</th>") < page.read_text().index("<th class=''>base</th>")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [lookalike.name]  # no temporary left
    assert lookalike.read_text() == "mine" and page.stat().st_mode & 0o777 == 0o644


def test_a_single_run_still_gets_its_own_report(runs):
    result = _compare(runs[0])
    assert result.returncode == 0 and result.stdout.strip() == str(runs[0] / "report.html")
    assert "lab2 run: base" in (runs[0] / "report.html").read_text()


@pytest.mark.browser
def test_the_comparison_renders_in_headless_chromium(runs, tmp_path):
    chromium = Chromium(tmp_path)
    page = tmp_path / "compare.html"
    assert _compare(*runs, "--output", page).returncode == 0
    images, height = chromium.images_and_height(page)
    assert images == "images=2 loaded=2" and height > 1500
    assert chromium.screenshot_contrast(page, tmp_path / "compare.png") > 10  # not a blank page


def test_many_runs_wrap_their_confusion_matrices_into_rows():
    matrices = [(f"run{i}", np.eye(3, dtype=int) * (i + 1)) for i in range(4)]
    fig = confusion_matrices_figure(matrices, ["cat", "dog", "ship"])
    shown = [ax for ax in fig.axes if ax.axison]
    assert [ax.get_title().split("\n")[0] for ax in shown] == ["run0", "run1", "run2", "run3"]
    assert len(fig.axes) == 6 and fig.get_size_inches()[0] < 3 * 7  # three per row, the last row padded
    assert shown[3].images[0].get_array()[0, 0] == 1.0 and shown[3].texts[0].get_text() == "4"


def test_a_run_folder_that_does_not_exist_is_named_not_an_output_never_given(tmp_path):
    """Found by a hostile try: `lab2-report MISSING` blamed `--output MISSING/report.html`, which was never given."""
    from lab2.errors import UserError
    from lab2.report.pages import write_report

    with pytest.raises(UserError, match="is not a folder; give the --output_dir of a run") as refused:
        write_report(tmp_path / "missing")
    assert "--output " not in str(refused.value)


@pytest.fixture(scope="module")
def unnamed_runs(tmp_path_factory):
    """Two finished 1-epoch runs without --run_name (lab2's <model>-<date>-<time> names), one of them
    `--recipe fast`, and a copy of the plain one: a run no flag tells apart."""

    def build(root):
        data = write_synthetic_folder(root / "data", num_train=256, num_test=128)
        for name, recipe in (("plain", "none"), ("fast", "fast")):
            flags = ["--data_dir", data, "--output_dir", root / name, "--recipe", recipe, "--num_train_epochs", 1]
            flags += ["--report_to", "none", "--flow_log_steps", 0, "--num_prediction_samples", 0]
            result = run_cli(train_cmd(*flags))
            assert result.returncode == 0, result.stderr
        shutil.copytree(root / "plain", root / "twin")

    root = built_once(tmp_path_factory, "unnamed_runs", build)
    return root / "plain", root / "fast", root / "twin"


def _header_cells(page: str) -> list[str]:
    return re.findall(r"<th class=''>(.*?)</th>", page.split("<h2>Final metrics</h2>")[1].split("</tr>")[0])


def test_runs_are_labelled_by_the_flags_that_differ_and_a_given_run_name_wins(unnamed_runs, runs, tmp_path):
    plain, fast, twin = unnamed_runs
    assert json.loads((plain / "config.json").read_text())["run_name"].startswith("simple_cnn-")
    page = tmp_path / "compare.html"
    assert _compare(plain, fast, "--output", page).returncode == 0
    # Only --recipe was given differently; the recipe's own values (optim, learning_rate, ...) do not label.
    assert _header_cells(page.read_text()) == ["recipe=none", "recipe=fast"]
    assert _compare(plain, fast, runs[0], "--output", page).returncode == 0
    labels = _header_cells(page.read_text())
    assert labels[1] == "recipe=fast" and labels[2] == "base"  # --run_name base was given
    assert _compare(plain, twin, "--output", page).returncode == 0  # nothing differs: the folder names
    assert _header_cells(page.read_text()) == ["plain", "twin"]


def test_the_report_header_shows_recipe_given_flags_time_and_device_and_the_table_marks_them(unnamed_runs):
    fast = unnamed_runs[1]
    page = (fast / "report.html").read_text()  # written by the run itself
    summary = json.loads((fast / "summary.json").read_text())
    header = page.split("<h2>")[0]
    assert "recipe <b>fast</b>" in header
    given = re.search(r"flags given: <code>(.*?)</code>", header).group(1)
    assert "--recipe fast" in given and "--num_train_epochs 1" in given
    assert "--optim" not in given and "--output_dir" not in given  # the recipe's value; lab2's own
    seconds = sum(json.loads(line)["epoch_time_s"] for line in (fast / "metrics.jsonl").read_text().splitlines())
    assert f"wall time <b>{summary['wall_time_s'] / 60:.1f} min</b> (start-up" in header  # finished: not "so far"
    assert f"of which training <b>{seconds / 60:.1f} min</b>" in header and summary["wall_time_s"] > seconds
    assert f"device <b>{summary['device']} x1, {summary['precision']}</b>" in header
    table = page.split("<h2>Configuration</h2>")[1]
    rows = re.findall(r"<tr class='(\w+)'><td class='l'>--(\w+)</td><td class='l'>(.*?)</td>", table)
    kinds = [kind for kind, _, _ in rows]
    assert kinds == sorted(kinds, key=["given", "recipe", "default"].index)  # given first, then the recipe's
    by_flag = {flag: (kind, value) for kind, flag, value in rows}
    assert by_flag["recipe"] == ("given", "fast") and by_flag["num_train_epochs"] == ("given", "1")
    assert by_flag["optim"] == ("recipe", "adamw") and by_flag["seed"] == ("default", "42")
    assert by_flag["output_dir"][0] == by_flag["run_name"][0] == "default"  # filled in by lab2, not given
    assert len(by_flag) == len(json.loads((fast / "config.json").read_text()))
    assert "tr.given td { font-weight: bold" in page


def test_eleven_runs_get_eleven_different_looks(runs):
    """Found by a hostile try: matplotlib's cycle has 10 colours, so the 11th run looked like the first."""
    metrics = read_run(runs[0]).metrics
    fig = comparison_curves_figure([(f"run{i}", metrics) for i in range(11)])
    eval_lines = [line for line in fig.axes[0].lines if line.get_label().endswith(" eval")]
    assert len(eval_lines) == 11
    assert len({(line.get_color(), line.get_marker()) for line in eval_lines}) == 11
    # One legend, below the panels, a run per entry: none inside a panel, covering the curves.
    assert not any(ax.get_legend() for ax in fig.axes) and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [f"run{i}" for i in range(11)]
