import pytest
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration
from PIL import Image
from torchvision import transforms

from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD
from lab2.data.device_dataset import (
    PAD,
    DeviceDataset,
    augmentation_for_epoch,
    crop_flip,
    device_dataloader,
)


def _index_image() -> torch.Tensor:
    """A 3x32x32 uint8 image whose pixel (r, c) encodes its position: (r, c, 200)."""
    rows = torch.arange(32).view(32, 1).expand(32, 32)
    cols = torch.arange(32).view(1, 32).expand(32, 32)
    return torch.stack([rows + 10, cols + 10, torch.full((32, 32), 200)]).to(torch.uint8)


def test_crop_and_flip_on_a_known_image():
    image = _index_image()[None].repeat(3, 1, 1, 1)
    offsets = torch.tensor([[4, 4], [0, 8], [6, 2]])
    flips = torch.tensor([False, False, True])
    out = crop_flip(image, offsets, flips)
    assert torch.equal(out[0], image[0])  # offset (4, 4) is the uncropped centre
    # Offset (0, 8): four zero-padded rows on top, the image shifted left by 4.
    assert torch.all(out[1, :, :4] == 0)
    assert torch.equal(out[1, :, 4:, :28], image[0, :, :28, 4:])
    assert torch.all(out[1, :, :, 28:] == 0)
    # Flip then the same per-sample crop equals torchvision's functional crop + hflip.
    padded = torch.nn.functional.pad(image[2], (PAD, PAD, PAD, PAD))
    expected = padded[:, 6 : 6 + 32, 2 : 2 + 32].flip(-1)
    assert torch.equal(out[2], expected)


def test_augmentation_statistics_match_torchvision():
    """Both pipelines draw row/column shifts uniformly from 0..8 and flip half the time."""
    n = 4000
    image = _index_image()
    # Device pipeline, many samples of the same image.
    offsets, flips = augmentation_for_epoch(n, seed=3, epoch=0)
    ours = crop_flip(image[None].repeat(n, 1, 1, 1), offsets, flips)
    # torchvision pipeline on the same image.
    torch.manual_seed(0)
    tv = transforms.Compose(
        [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
    )
    pil = Image.fromarray(image.permute(1, 2, 0).numpy())
    theirs = torch.stack([tv(pil) for _ in range(n)])

    def stats(crops):
        rows = crops[:, 0].long()
        # Row shift: which image row sits at output row 16 (always an image row).
        row_shift = PAD - (rows[:, 16, 16] - 10 - 16)
        cols = crops[:, 1, 16].long()  # a middle row: columns 10..41, or 0 where padded
        flipped = (cols[:, 16] > cols[:, 17]).float()
        return row_shift, flipped

    (r1, f1), (r2, f2) = stats(ours), stats(theirs)
    h1 = torch.bincount(r1, minlength=9).float() / n
    h2 = torch.bincount(r2, minlength=9).float() / n
    assert set(r1.unique().tolist()) == set(range(9)) == set(r2.unique().tolist())
    assert torch.allclose(h1, torch.full((9,), 1 / 9), atol=0.03) and torch.allclose(
        h2, torch.full((9,), 1 / 9), atol=0.03
    )
    assert abs(f1.mean() - 0.5) < 0.03 and abs(f2.mean() - 0.5) < 0.03
    # Pixel means agree too (zero padding lowers them the same way in both).
    assert abs(ours.float().mean() - theirs.float().mean()) < 1.5


def _random_split(n: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=generator), torch.randint(
        0, 10, (n,), generator=generator
    )


def test_a_sample_looks_the_same_whatever_the_batching():
    """Augmentation is a function of (seed, epoch, index): batch size and order do not change a sample."""
    images, labels = _random_split(50)
    dataset = DeviceDataset(images, labels, train=True, seed=5)
    dataset.set_epoch(3)
    whole_x, whole_y = dataset.__getitems__(list(range(50)))
    picked = [41, 7, 7, 0]
    x, y = dataset.__getitems__(picked)
    assert torch.equal(x, whole_x[picked]) and torch.equal(y, whole_y[picked])
    single_x, _ = dataset[13]
    assert torch.equal(single_x, whole_x[13])
    dataset.set_epoch(4)  # a new epoch, a new crop and flip for most samples
    assert not torch.equal(dataset.__getitems__(list(range(50)))[0], whole_x)
    dataset.set_epoch(3)  # and back: the same as before
    assert torch.equal(dataset.__getitems__(list(range(50)))[0], whole_x)


def test_batches_are_normalised_floats_in_channels_last():
    images, labels = _random_split(300)
    loader = device_dataloader(
        DeviceDataset(images, labels, train=True, seed=1, channels_last=True), 64, shuffle=True, seed=1
    )
    x, y = next(iter(loader))
    assert (
        x.dtype == torch.float32 and x.shape == (64, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    )
    assert y.dtype == torch.int64 and y.shape == (64,)
    mean, std = torch.tensor(CIFAR10_MEAN), torch.tensor(CIFAR10_STD)
    assert torch.isclose(x.min(), (-mean / std).min(), atol=1e-5) and torch.isclose(
        x.max(), ((1 - mean) / std).max(), atol=1e-5
    )  # 0 and 255
    test = DeviceDataset(images, labels, train=False)
    tx, ty = test.__getitems__([0, 1])
    expected = (images[:2].float() / 255 - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        CIFAR10_STD
    ).view(1, 3, 1, 1)
    assert torch.allclose(tx, expected, atol=1e-5) and torch.equal(ty, labels[:2])  # evaluation: no augmentation


def test_accelerate_prepares_it_and_skips_batches_for_a_mid_epoch_resume():
    """One process: the prepared loader reshuffles per epoch, and skip_first_batches resumes in the same order."""
    images, labels = _random_split(300)
    accelerator = Accelerator(
        cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=1)
    )
    loader = accelerator.prepare(
        device_dataloader(DeviceDataset(images, labels, train=True, seed=1), 64, shuffle=True, seed=1)
    )
    loader.set_epoch(2)
    loader.dataset.set_epoch(2)
    full = list(loader)
    assert len(full) == 5 and sum(len(y) for _, y in full) == 300
    loader.set_epoch(2)
    resumed = list(accelerator.skip_first_batches(loader, 3))
    assert len(resumed) == 2
    for (xa, ya), (xb, yb) in zip(full[3:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[1], full[0][1])  # another epoch, another order


def test_dataset_refuses_float_images():
    with pytest.raises(TypeError):
        DeviceDataset(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), train=True)


def test_both_pipelines_take_the_augmentation_from_one_definition():
    """The torchvision path's RandomCrop and RandomHorizontalFlip carry the values the device path draws with."""
    from lab2.data.cifar import CROP_PADDING, FLIP_PROBABILITY, train_transform

    steps = {type(step).__name__: step for step in train_transform().transforms}
    assert steps["RandomCrop"].padding == CROP_PADDING == PAD
    assert steps["RandomHorizontalFlip"].p == FLIP_PROBABILITY
    offsets, flips = augmentation_for_epoch(20000, seed=1, epoch=0)
    assert int(offsets.max()) == 2 * CROP_PADDING and int(offsets.min()) == 0
    assert abs(flips.float().mean().item() - FLIP_PROBABILITY) < 0.02
