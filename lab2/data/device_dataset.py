"""The device-resident Dataset and the loaders of either --data_pipeline.

The split stays on the device as uint8; `__getitems__` gathers, crops, flips and normalises a whole batch there
(airbench's approach): no per-image Python, PIL or worker on the hot path. Wrapped in a plain DataLoader, it goes
through `accelerator.prepare`, which shards, evens the batches, skips batches on resume and reshuffles per epoch.
The augmentation is a function of (seed, epoch, sample index), whatever the batching, process count or resume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lab2.data.cifar import CIFAR10_MEAN, CIFAR10_STD, FLIP_PROBABILITY, DataSplits, torchvision_loaders
from lab2.data.cifar import CROP_PADDING as PAD


def use_channels_last(setting: str, device: torch.device) -> bool:
    """--channels_last auto|on|off for `device`. Measured: channels_last trains SimpleCNN ~1.5x faster
    on an AVX2 CPU (oneDNN), and cuDNN prefers it for convolutions too."""
    return setting == "on" or (setting == "auto" and torch.device(device).type in ("cpu", "cuda"))


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """torchvision's RandomCrop(H, padding=PAD) then RandomHorizontalFlip for a batch, as two gathers: uint8 `images`
    (B, C, H, W), int64 `offsets` (B, 2) in 0..2*PAD (row, column) into the zero-padded image, bool `flips` (B,)."""
    batch, channels, height, width = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))  # zero fill, like torchvision's default
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
    steps = torch.arange(width, device=images.device)
    # A flip reads the crop's columns right to left: fold it into the column index.
    cols = offsets[:, 1:2] + torch.where(flips[:, None], width - 1 - steps, steps)  # (B, W)
    out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, width + 2 * PAD))
    return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))


def augmentation_for_epoch(num_samples: int, seed: int, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(offsets int64 (N, 2) in 0..2*PAD, flips bool (N,)) for every sample in `epoch`, from a CPU generator of
    its own: the same on every process and device, independent of the global RNG and the shuffle."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    offsets = torch.randint(0, 2 * PAD + 1, (num_samples, 2), generator=generator)
    flips = torch.rand(num_samples, generator=generator) < FLIP_PROBABILITY
    return offsets, flips


class DeviceDataset(Dataset):
    """(normalised float image, int64 label) pairs from uint8 `images` (N, C, H, W) and `labels` kept on `device`;
    `train` augments them: call `set_epoch(e)` before each training epoch to draw that epoch's augmentation."""

    def __init__(
        self, images, labels, *, train, device="cpu", seed=0, channels_last=False, mean=CIFAR10_MEAN, std=CIFAR10_STD
    ):
        if images.dtype != torch.uint8:
            raise TypeError(f"DeviceDataset keeps uint8 images, got {images.dtype}")
        self.device = torch.device(device)
        self.images = images.to(self.device)
        self.labels = labels.to(device=self.device, dtype=torch.int64)
        self.train, self.seed, self.channels_last = train, seed, channels_last
        # Normalisation folded into one multiply-add on 0..255 values: x * scale + shift.
        std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std_t
        self.epoch = -1
        if train:
            self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Draw the augmentation of every sample for `epoch` (one host-to-device copy per epoch)."""
        if self.train and epoch != self.epoch:
            offsets, flips = augmentation_for_epoch(len(self.labels), self.seed, epoch)
            self.offsets, self.flips = offsets.to(self.device), flips.to(self.device)
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(indices, dtype=torch.int64)
        # The sampler's indices are host ints. Copied from pinned memory with non_blocking, the transfer is queued
        # on the stream behind the previous step's kernels instead of waiting for them: no per-batch host-device
        # synchronisation (the caching allocator keeps the pinned block alive until the copy has run).
        cuda = self.device.type == "cuda"
        index = (index.pin_memory() if cuda else index).to(self.device, non_blocking=cuda)
        images = self.images[index]
        if self.train:
            images = crop_flip(images, self.offsets[index], self.flips[index])
        out = torch.addcmul(self.shift, images.float(), self.scale)  # normalised
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out, self.labels[index]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]


def device_dataloader(
    dataset: DeviceDataset, batch_size: int, *, shuffle: bool, seed: int = 0, drop_last: bool = False
) -> DataLoader:
    """A DataLoader without workers (the data is on the device). The seeded generator makes the shuffle
    reproducible (with `use_seedable_sampler`, seed + epoch on every process)."""
    generator = torch.Generator().manual_seed(seed) if shuffle else None
    # collate_fn keeps the batch as it is: `__getitems__` already returns a whole one.
    loader = dict(batch_size=batch_size, shuffle=shuffle, generator=generator, num_workers=0, drop_last=drop_last)
    return DataLoader(dataset, collate_fn=lambda batch: batch, **loader)


def pipeline_loaders(cfg, splits: DataSplits, device, channels_last: bool):
    """(train, eval) DataLoaders of --data_pipeline, unprepared; --dataloader_drop_last applies to training."""
    train_batch, eval_batch, seed = cfg.per_device_train_batch_size, cfg.per_device_eval_batch_size, cfg.seed
    if cfg.data_pipeline == "torchvision":
        return torchvision_loaders(splits, train_batch, eval_batch, cfg.num_workers, seed, cfg.dataloader_drop_last)
    on_device = dict(device=device, channels_last=channels_last)
    train = DeviceDataset(splits.train_images, splits.train_labels, train=True, seed=seed, **on_device)
    test = DeviceDataset(splits.test_images, splits.test_labels, train=False, **on_device)
    return (
        device_dataloader(train, train_batch, shuffle=True, seed=seed, drop_last=cfg.dataloader_drop_last),
        device_dataloader(test, eval_batch, shuffle=False),
    )
