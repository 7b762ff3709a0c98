"""The README's sample outputs and helper commands, run for real: a sample that no longer matches fails here."""

import json
import re
import subprocess
import sys

import numpy as np
from conftest import BIN, REPO, cli_env, run_cli
from PIL import Image
from safetensors.torch import save_file

from lab2.config.train_config import TrainConfig
from lab2.data.cifar_reader import CIFAR10_CLASSES, read_cifar_batch
from lab2.models import create_model

README = (REPO / "README.md").read_text()


def _block_after(marker: str) -> str:
    """The first fenced block after `marker` in the README."""
    return re.search(r"```\n(.*?)```", README[README.index(marker) :], re.S).group(1)


def test_the_flops_table_in_the_readme_is_what_lab2_flops_prints():
    result = run_cli([str(BIN / "lab2-flops"), "--model", "simple_cnn"])
    assert result.returncode == 0, result.stderr
    assert _block_after("**`lab2-flops --model simple_cnn`**").strip() in result.stdout


def test_sample_images_then_predict_on_the_folder_as_the_readme_says(mini_dir, tmp_path):
    script = [sys.executable, str(REPO / "examples" / "sample_images.py")]
    samples = tmp_path / "samples"
    made = subprocess.run(
        [*script, "--data_dir", str(mini_dir), "--count", "4", "--output", str(samples)],
        cwd=REPO,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert made.returncode == 0, made.stderr
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
