"""Check a finished run against its own claim: its model.safetensors, evaluated afresh, gives its reported accuracy."""

from pathlib import Path

from accelerate import Accelerator

from lab2.data.cifar import read_cifar10_folder
from lab2.data.device_dataset import DeviceDataset, device_dataloader
from lab2.engine.evaluation import evaluate
from lab2.models import create_model
from lab2.state.model_file import read_exported_model


def evaluate_saved_weights(run_dir: Path, data_dir: Path, max_eval=None):
    """Single-process evaluation of a run's model.safetensors on the test split."""
    state, metadata = read_exported_model(run_dir)
    model = create_model(metadata["model"], int(metadata["num_classes"]))
    model.load_state_dict(state)
    splits = read_cifar10_folder(data_dir / "cifar-10-batches-py").truncated(None, max_eval)
    loader = device_dataloader(DeviceDataset(splits.test_images, splits.test_labels, train=False), 256, shuffle=False)
    return evaluate(model, loader, Accelerator(cpu=True), splits.num_classes)
