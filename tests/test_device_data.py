import pytest
import torch
from PIL import Image
from torchvision import transforms

from lab2.device_data import PAD, PADDING_LABEL, DeviceLoader, crop_flip


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
    loader = DeviceLoader(image[None].repeat(n, 1, 1, 1), torch.zeros(n, dtype=torch.long), n, train=True, seed=3, channels_last=False)
    offsets, flips = loader._augmentation(n)
    ours = crop_flip(image[None].repeat(n, 1, 1, 1), offsets, flips)
    # torchvision pipeline on the same image.
    torch.manual_seed(0)
    tv = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(), transforms.PILToTensor()])
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
    assert torch.allclose(h1, torch.full((9,), 1 / 9), atol=0.03) and torch.allclose(h2, torch.full((9,), 1 / 9), atol=0.03)
    assert abs(f1.mean() - 0.5) < 0.03 and abs(f2.mean() - 0.5) < 0.03
    # Pixel means agree too (zero padding lowers them the same way in both).
    assert abs(ours.float().mean() - theirs.float().mean()) < 1.5


def test_train_shards_are_disjoint_and_cover_the_split():
    n = 1001
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(n)
    shards = [DeviceLoader(images, labels, 64, train=True, seed=7, process_index=r, num_processes=2).shard_indices(epoch=3) for r in range(2)]
    a, b = (set(s.tolist()) for s in shards)
    assert not a & b
    assert len(a) == len(b) == 500 and len(a | b) == 1000  # one sample of 1001 dropped to keep shards equal
    # A new epoch is a new permutation, the same on both processes.
    again = DeviceLoader(images, labels, 64, train=True, seed=7, process_index=0, num_processes=2).shard_indices(epoch=4)
    assert not torch.equal(again, shards[0])


def test_eval_shards_are_padded_and_cover_the_split_exactly():
    n = 1001
    images = torch.zeros(n, 3, 32, 32, dtype=torch.uint8)
    labels = torch.arange(n) % 10
    seen = []
    for rank in range(2):
        loader = DeviceLoader(images, labels, 100, train=False, process_index=rank, num_processes=2)
        batches = list(loader)
        assert len(batches) == len(loader) == 6
        got = torch.cat([y for _, y in batches])
        seen.append(got[got != PADDING_LABEL])
    assert sum(len(s) for s in seen) == n
    assert torch.equal(torch.cat(seen), labels)


def test_batches_are_normalised_floats_and_resume_mid_epoch_exactly():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (300,))
    loader = DeviceLoader(images, labels, 64, train=True, seed=1, channels_last=True)
    loader.set_epoch(2)
    full = list(loader)
    x, y = full[0]
    assert x.dtype == torch.float32 and x.shape == (64, 3, 32, 32) and x.is_contiguous(memory_format=torch.channels_last)
    assert -2.5 < x.min() < -1.5 and 1.5 < x.max() < 2.5  # 0 and 255 after CIFAR normalisation
    loader.start_batch = 3
    resumed = list(loader)
    assert len(resumed) == len(full) - 3
    for (xa, ya), (xb, yb) in zip(full[3:], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(list(loader)) == len(full)  # the offset applies to one epoch only


def test_loader_refuses_float_images():
    with pytest.raises(TypeError):
        DeviceLoader(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.long), 2, train=True)
