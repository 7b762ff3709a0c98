"""The sample outputs the docs show (docs/commands.md) and the README's helper commands, run for real: a sample
that no longer matches fails here."""

import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import BIN, REPO, built_once, cli_env, run_cli, train_cmd
from PIL import Image
from safetensors.torch import save_file

from lab2.config import TrainConfig
from lab2.data.cifar_files import CIFAR10_CLASSES, read_cifar_batch, synthetic_images, write_cifar10_folder
from lab2.models import create_model
from lab2.state.run_folder import claim

PAGE = (REPO / "docs" / "commands.md").read_text()  # where the samples and the FLOPs table are shown
sys.path.insert(0, str(REPO / "docs"))
import readme_samples  # noqa: E402  (docs/ is not a package: the script the Makefile runs)


def _block_after(marker: str) -> str:
    """The first fenced block after `marker` in docs/commands.md."""
    return re.search(r"```\n(.*?)```", PAGE[PAGE.index(marker) :], re.S).group(1)


def test_the_flops_table_in_the_docs_is_what_lab2_flops_prints():
    result = run_cli([str(BIN / "lab2-flops"), "--model", "simple_cnn"])
    assert result.returncode == 0, result.stderr
    assert _block_after("**`lab2-flops --model simple_cnn`**").strip() in result.stdout


def test_sample_images_keeps_class_names_with_a_slash_inside_the_output_folder(tmp_path):
    """Issue 23, item 7: the file name is built from the class name; 't-shirt/top' made a path into a folder."""
    names = ["t-shirt/top", "../../escaped", "/abs/path", "back\\slash", "x" * 300]
    test = synthetic_images(12, len(names), 1)
    write_cifar10_folder(tmp_path / "data" / "cifar-10-batches-py", *test, *test, class_names=names)
    samples = tmp_path / "out" / "samples"
    script = [sys.executable, "examples/sample_images.py"]
    made = run_cli([*script, "--data_dir", str(tmp_path / "data"), "--count", "12", "--output", str(samples)])
    assert made.returncode == 0, made.stderr
    files = sorted(samples.iterdir())
    assert len(files) == 12 and all(f.is_file() and f.suffix == ".png" for f in files)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.parent != samples and p.is_file()) == [
        p.relative_to(tmp_path) for p in sorted((tmp_path / "data" / "cifar-10-batches-py").iterdir())
    ]  # nothing written outside the output folder
    _, labels = read_cifar_batch(tmp_path / "data" / "cifar-10-batches-py" / "test_batch", len(names))
    expected = ["t-shirt_top", "_escaped", "_abs_path", "back_slash", "x" * 100]
    assert [f.name for f in files] == [f"{i:04d}-{expected[labels[i]]}.png" for i in range(12)]


def test_sample_images_then_predict_on_the_folder_as_the_readme_says(mini_dir, tmp_path):
    script = [sys.executable, str(REPO / "examples" / "sample_images.py")]
    samples = tmp_path / "samples"
    for name in ("older", "newer"):  # run folders as lab2 marks them; the "try:" line names the newest
        claim(tmp_path / "runs" / name)
        time.sleep(0.01)
    made = subprocess.run(
        [*script, "--data_dir", str(mini_dir), "--count", "4", "--output", str(samples)],
        cwd=tmp_path,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
    assert f"try: lab2-predict --model_path runs/newer {samples}" in made.stdout, made.stdout
    images, labels = read_cifar_batch(mini_dir / "cifar-10-batches-py" / "test_batch")
    files = sorted(samples.iterdir())
    assert [f.name for f in files] == [f"{i:04d}-{CIFAR10_CLASSES[labels[i]]}.png" for i in range(4)]
    assert np.array_equal(np.asarray(Image.open(files[0])), images[0].transpose(1, 2, 0))  # lossless, same pixels
    again = subprocess.run(
        [*script, "--data_dir", str(mini_dir), "--output", str(samples)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 2 and again.stderr.count("error:") == 1 and len(list(samples.iterdir())) == 4
    model = tmp_path / "model.safetensors"
    state = {k: v.contiguous() for k, v in create_model("simple_cnn", 10).state_dict().items()}
    metadata = {"model": "simple_cnn", "num_classes": "10", "class_names": json.dumps(list(CIFAR10_CLASSES))}
    save_file(state, str(model), metadata={**metadata, "config": json.dumps(TrainConfig().to_dict()), "format": "pt"})
    predicted = run_cli([str(BIN / "lab2-predict"), "--model_path", str(model), str(samples)])
    assert predicted.returncode == 0, predicted.stderr
    assert [line.split(":")[0] for line in predicted.stdout.splitlines()] == [str(f) for f in files]


@pytest.fixture(scope="module")
def small_real_run(mini_dir, tmp_path_factory):
    """A finished 1-epoch run on the real slice: the samples come from real CIFAR-10 images."""

    def build(root):
        flags = ["--data_dir", mini_dir, "--max_train_samples", 128, "--max_eval_samples", 100, "--num_train_epochs", 1]
        flags += ["--report_to", "none", "--flow_log_steps", 0, "--output_dir", root / "run"]
        result = run_cli(train_cmd(*flags))
        assert result.returncode == 0, result.stdout + result.stderr

    return built_once(tmp_path_factory, "readme_run", build) / "run"


def _samples(run, data, *flags):
    return run_cli([sys.executable, str(REPO / "docs" / "readme_samples.py"), "--run", run, "--data_dir", data, *flags])


def test_the_doc_samples_match_the_code_and_a_stale_one_is_found_and_rewritten(small_real_run, mini_dir, tmp_path):
    """docs/readme_samples.py (`make readme-samples`) on a small real run: --check finds a stale line, writing
    replaces it, and what it writes has the shape of the page's own samples (the numbers are the smoke run's)."""
    page = tmp_path / "commands.md"
    first = _block_after("<!-- sample: lab2-eval -->").splitlines()[1]
    assert first.startswith("accuracy:")
    # The line as lab2-eval printed it before it reported the ECE.
    page.write_text(PAGE.replace(first, "accuracy: 23.21% (236/1017), loss 2.1233"))
    stale = _samples(small_real_run, mini_dir, "--check", "--page", page)
    assert stale.returncode == 1 and "lab2-eval sample no longer matches" in stale.stdout, stale.stdout + stale.stderr
    assert "lab2-predict" not in stale.stdout.replace("lab2-predict --model_path", "")  # that sample still matches
    rewritten = _samples(small_real_run, mini_dir, "--page", page)
    assert rewritten.returncode == 0, rewritten.stdout + rewritten.stderr
    text = page.read_text()
    start = "<!-- sample: lab2-eval"
    assert text.count("<!-- /sample -->") == 2 and text[: text.index(start)] == PAGE[: PAGE.index(start)]
    assert ", ECE " in text and "figures and eval.json in runs/smoke/eval" in text
    assert "lab2-predict: error: nothing.jpg: no such file." in text
    # What was written is what --check compares with: the page's own samples have its shape.
    for marker in ("<!-- sample: lab2-eval -->", "<!-- sample: lab2-predict -->"):
        written = re.search(r"```\n(.*?)```", text[text.index(marker) :], re.S).group(1)
        assert readme_samples.masked(written) == readme_samples.masked(_block_after(marker))
