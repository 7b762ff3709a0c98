"""examples/lab2.ipynb executed in a real Jupyter kernel: lab2.train in the kernel and under notebook_launcher."""

import json

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

pytestmark = pytest.mark.slow
NOTEBOOK = REPO / "examples" / "lab2.ipynb"


@pytest.fixture(scope="module")
def executed(mini_dir, tmp_path_factory):
    """The notebook run once, top to bottom, on the mini slice, writing under a temporary folder."""
    out = tmp_path_factory.mktemp("notebook")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    parameters.source = (
        f"from pathlib import Path\n\nDATA_DIR = Path({str(mini_dir)!r})\nOUTPUT_ROOT = Path({str(out)!r})"
    )
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(out)}}
    )
    client.execute()
    return notebook, out


def _text(cell) -> str:
    return "".join(o.get("text", "") + "".join(o.get("data", {}).get("text/plain", "")) for o in cell.outputs)


def _cell(notebook, fragment: str):
    return next(c for c in notebook.cells if c.cell_type == "code" and fragment in c.source)


def test_the_notebook_trains_in_the_kernel_and_shows_the_run_figures(executed):
    notebook, out = executed
    summary = json.loads((out / "notebook-one-process" / "summary.json").read_text())
    assert summary["world_size"] == 1 and summary["num_eval_samples"] == 200
    # The accuracy printed in the notebook is the run's own, read from the dict lab2.train returned.
    assert f"final eval accuracy: {100 * summary['final_eval_acc']:.2f}% on 200 images" in _text(
        _cell(notebook, "summary = lab2.train")
    )
    figures = [o for o in _cell(notebook, "display(Image").outputs if "image/png" in o.get("data", {})]
    assert len(figures) == 5
    assert '"final_eval_acc"' in _text(_cell(notebook, "json.dumps"))
    assert not [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]


def test_notebook_launcher_trains_on_two_cpu_processes_and_writes_once(executed):
    notebook, out = executed
    run = out / "notebook-two-processes"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_eval_samples"] == 200
    assert sum(map(sum, summary["confusion_matrix"])) == 200  # gathered exactly over the two processes
    output = _text(_cell(notebook, "notebook_launcher(train_on_two_processes"))
    assert "world size 2" in output and output.count("done: final eval accuracy") == 1
    # Rank 0 alone writes: one record per epoch and one flow snapshot (the final one), not one per process.
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert len((run / "flow.jsonl").read_text().splitlines()) == 1


def test_the_notebook_says_which_data_it_uses_in_a_cell_of_its_own(executed):
    notebook, _ = executed
    assert _text(_cell(notebook, "REAL_DATA = next(")).startswith("data: real CIFAR-10 images from ")
    for fragment in ("summary = lab2.train", "notebook_launcher(train_on_two_processes"):
        assert "CIFAR-10 from " in _text(_cell(notebook, fragment))  # the accuracy lines name their data
    assert "on cpu" in _text(_cell(notebook, "notebook_launcher(train_on_two_processes"))  # despite "2 CUDAs"


def _data_cell_output(cwd) -> str:
    """Run only the notebook's parameters and data cells, unchanged, from `cwd`."""
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    last = notebook.cells.index(next(c for c in notebook.cells if "REAL_DATA = next(" in c.source))
    notebook.cells = notebook.cells[: last + 1]
    nbclient.NotebookClient(
        notebook, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
    ).execute()
    return _text(notebook.cells[last])


def test_the_notebook_finds_the_real_slice_from_a_clone_and_names_synthetic_data_when_there_is_none(mini_dir, tmp_path):
    assert mini_dir.resolve() == (REPO / "examples" / "../../shared/data/cifar10-mini").resolve()
    assert _data_cell_output(REPO / "examples").startswith(f"data: real CIFAR-10 images from {mini_dir.resolve()}")
    empty = tmp_path / "a" / "b" / "examples"
    empty.mkdir(parents=True)
    assert _data_cell_output(empty).startswith("data: SYNTHETIC images")
