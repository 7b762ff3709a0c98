"""The course lab's model_final.pth: loaded safely into lab2, evaluated by lab2-eval, exported by lab2-export."""

import json
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from conftest import REPO

from lab2.cli import eval as eval_cli
from lab2.cli import predict as predict_cli
from lab2.cli.tools import export_main
from lab2.data.cifar_files import CIFAR10_CLASSES
from lab2.errors import UserError
from lab2.state.model_file import load_exported_model, load_lab_model, read_exported_model, read_lab_state_dict


class LabSimpleCNN(nn.Module):
    """The course lab's model, written as the lab wrote it (its module names and its forward)."""

    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv3 = nn.Conv2d(64, 128, kernel_size=3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.conv4 = nn.Conv2d(128, 128, kernel_size=3, padding=1)
        self.bn4 = nn.BatchNorm2d(128)
        self.fc1 = nn.Linear(128 * 8 * 8, 512)
        self.dropout = nn.Dropout(0.5)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.bn2(self.conv2(x))))
        x = F.relu(self.bn3(self.conv3(x)))
        x = self.pool(F.relu(self.bn4(self.conv4(x))))
        x = x.view(-1, 128 * 8 * 8)
        x = F.relu(self.fc1(x))
        x = self.dropout(x)
        x = self.fc2(x)
        return x


@pytest.fixture(scope="module")
def lab_checkpoint(tmp_path_factory):
    """A model_final.pth as the lab saves it, after two training steps
    (so BatchNorm statistics are not the defaults)."""
    torch.manual_seed(0)
    model = LabSimpleCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(2):
        loss = F.cross_entropy(model(torch.randn(16, 3, 32, 32)), torch.randint(0, 10, (16,)))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("lab") / "model_final.pth"
    torch.save(model.state_dict(), path)
    images = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        return path, images, model(images)


def test_the_labs_state_dict_gives_identical_logits(lab_checkpoint):
    path, images, lab_logits = lab_checkpoint
    loaded = load_lab_model(path)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), lab_logits)
        channels_last = loaded.model.to(memory_format=torch.channels_last)(images.to(memory_format=torch.channels_last))
    torch.testing.assert_close(channels_last, lab_logits, rtol=1e-4, atol=1e-5)  # lab2's training layout, other kernels


def test_lab2_export_writes_a_lab2_model_with_metadata(lab_checkpoint, tmp_path, capsys):
    path, images, lab_logits = lab_checkpoint
    out = tmp_path / "exported" / "model.safetensors"
    out.parent.mkdir()
    export_main([str(path), "--output", str(out)])  # the lab2-export entry point, in process
    assert f"wrote {out}" in capsys.readouterr().out
    _, metadata = read_exported_model(out)
    assert metadata["model"] == "simple_cnn" and metadata["num_classes"] == "10"
    assert json.loads(metadata["class_names"])[0] == "airplane" and "model_final.pth" in metadata["source"]
    loaded = load_exported_model(out)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), lab_logits)
    assert "lab2-export = lab2.cli.tools:export_main" in (REPO / "setup.cfg").read_text()


def test_lab2_eval_evaluates_the_labs_file(lab_checkpoint, synthetic_dir, tmp_path, capsys):
    path, _, _ = lab_checkpoint
    report = eval_cli.run_eval(
        eval_cli.build_parser().parse_args(
            ["--model_path", str(path), "--data_dir", str(synthetic_dir), "--output_dir", str(tmp_path / "eval")]
        )
    )
    assert report["num_samples"] == 101 and 0 <= report["accuracy"] <= 1
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["accuracy"] == report["accuracy"]
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"conv1.weight": torch.zeros(1), "evil": Payload()}, path)
    with pytest.raises(UserError, match="more than weights"):
        read_lab_state_dict(path)


def test_a_plain_pickle_is_one_line_without_torch_warnings(tmp_path):
    """Issue 16, section 3: torch printed two lines of protocol warnings before lab2's error."""
    import pickle
    import sys

    from conftest import run_cli
    from PIL import Image

    path = tmp_path / "model_final.pt"
    with open(path, "wb") as handle:
        pickle.dump({"conv1.weight": torch.zeros(1)}, handle, protocol=4)  # pickle.dump, not torch.save
    Image.new("RGB", (32, 32)).save(tmp_path / "cat.png")
    result = run_cli([sys.executable, "-m", "lab2.cli.predict", "--model_path", str(path), str(tmp_path / "cat.png")])
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("lab2-predict: error:") and "plain pickle file" in result.stderr


@pytest.mark.parametrize("content", [b"hello\n", b"junk", b"PK\x03\x04 not a zip", b"\x80\x02K\x01."])
def test_a_file_that_is_no_torch_save_is_one_line(tmp_path, content):
    path = tmp_path / "model_final.pth"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable torch.save file|plain pickle file|not a state dict"):
        read_lab_state_dict(path)


def test_a_state_dict_of_another_model_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save(nn.Linear(3, 2).state_dict(), path)
    with pytest.raises(SystemExit) as exit_info:
        export_main([str(path)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("lab2-export: error:") and "does not hold a simple_cnn state dict" in err and "conv1" in err
    assert not (tmp_path / "model.safetensors").exists()


def test_lab2_predict_takes_the_labs_file(lab_checkpoint, tmp_path, capsys):
    from PIL import Image

    path, _, _ = lab_checkpoint
    image = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (200, 120, 40)).save(image)
    with pytest.raises(SystemExit) as exit_info:
        predict_cli.main(["--model_path", str(path), str(image), "--json"])
    assert exit_info.value.code == 0
    (result,) = json.loads(capsys.readouterr().out)
    lab_model = LabSimpleCNN()
    lab_model.load_state_dict(torch.load(path, weights_only=True))
    with torch.no_grad():
        expected = lab_model.eval()(predict_cli.read_image(str(image))[0][None]).softmax(dim=1)[0]
    top = result["top_k"][0]
    assert len(result["top_k"]) == 3 and top["class"] == CIFAR10_CLASSES[int(expected.argmax())]
    assert abs(top["probability"] - float(expected.max())) < 1e-6
