import json

import numpy as np
import torch
from accelerate import Accelerator
from torch import nn

from lab2.data.device_dataset import DeviceDataset, device_dataloader
from lab2.engine.evaluation import confusion_matrix, evaluate


class LabelFromPixel(nn.Module):
    """A 'model' whose prediction is read off the image: pixel (0,0,0) holds the class (or a wrong one)."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 9), 10).float() * 5


def test_confusion_matrix_counts():
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 2, 0, 2])
    cm = confusion_matrix(labels, preds, 3).numpy()
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_evaluate_is_exact_with_a_short_last_batch_and_builds_prediction_samples():
    n = 203  # not divisible by the batch size
    labels = torch.arange(n) % 10
    predicted = labels.clone()
    predicted[::4] = (labels[::4] + 1) % 10  # every fourth image is wrong
    # Images whose first pixel, after normalisation is undone by the model below, carries the prediction.
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    images[:, 0, 0, 0] = predicted.to(torch.uint8)
    dataset = DeviceDataset(images, labels, train=False, mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))
    accelerator = Accelerator(cpu=True)
    loader = accelerator.prepare(device_dataloader(dataset, 50, shuffle=False))
    result = evaluate(LabelFromPixel(), loader, accelerator, 10, num_samples=8, mean=(0, 0, 0), std=(1, 1, 1))
    wrong = len(range(0, n, 4))
    assert result.num_samples == n
    assert result.confusion.sum() == n and np.trace(result.confusion) == n - wrong
    assert abs(result.accuracy - (n - wrong) / n) < 1e-12
    assert result.per_class_accuracy.shape == (10,)
    samples = result.samples
    assert len(samples.images) == 8 and samples.images.dtype == np.uint8 and samples.images.shape[1:] == (32, 32, 3)
    assert (samples.predictions != samples.labels).sum() == 4  # half mistakes, half correct


def test_a_class_without_test_images_has_no_accuracy():
    """Issue 23 item 5: it was 0.0%, as if never predicted right; now null in summary.json and eval.json."""
    from lab2.engine.evaluation import EvalResult

    confusion = np.array([[3, 1, 0], [0, 0, 0], [1, 0, 4]])  # class "dog" has no test image
    result = EvalResult(loss=1.0, accuracy=7 / 9, num_samples=9, confusion=confusion)
    assert np.isnan(result.per_class_accuracy[1]) and result.per_class_accuracy[0] == 0.75
    accuracy = result.class_accuracy(["cat", "dog", "ship"])
    assert accuracy == {"cat": 0.75, "dog": None, "ship": 0.8}
    assert json.loads(json.dumps(accuracy, allow_nan=False)) == accuracy  # valid JSON: null, never NaN
