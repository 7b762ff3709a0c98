"""The device-resident batched loader: uint8 data on the device, augmented there in batches.

The split is copied to the device once as uint8 (150 MiB for all of CIFAR-10);
each batch is gathered, cropped, flipped and normalised by a few tensor ops on
the device, so no per-image Python, PIL or worker process is on the hot path
(the approach of airbench, hlb-CIFAR10 and Page's ResNet). No float copy of the
whole split is ever made.

Sharding: every process draws the same seeded permutation per epoch and takes
every `num_processes`-th index from its own offset, so shards are disjoint and
(up to num_processes - 1 dropped samples) cover the split. Evaluation shards
are contiguous and padded with label -1 to equal length, so every process runs
the same number of batches and the padding is dropped after gathering.

Augmentation parameters are drawn per epoch from a generator seeded by
(seed, epoch, process), so a run resumed mid-epoch sees exactly the batches it
would have seen (`start_batch`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lab2.data import CIFAR10_MEAN, CIFAR10_STD

PAD = 4  # random-crop padding in pixels, as the seed's RandomCrop(32, padding=4)
PADDING_LABEL = -1  # marks evaluation padding; evaluation drops it after gathering


def use_channels_last(setting: str, device: torch.device) -> bool:
    """--channels_last auto|on|off for `device`. Measured: channels_last trains SimpleCNN ~1.5x faster
    on an AVX2 CPU (oneDNN), and cuDNN prefers it for convolutions too."""
    return setting == "on" or (setting == "auto" and torch.device(device).type in ("cpu", "cuda"))


def crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
    """Random-crop-with-zero-padding and horizontal flip for a batch, as two gathers.

    images: uint8 (B, C, H, W); offsets: int64 (B, 2) in 0..2*PAD (row, column)
    into the zero-padded image; flips: bool (B,). Equivalent per sample to
    torchvision's RandomCrop(H, padding=PAD) then RandomHorizontalFlip.
    """
    batch, channels, height, width = images.shape
    padded = F.pad(images, (PAD, PAD, PAD, PAD))  # zero fill, like torchvision's default
    rows = offsets[:, 0:1] + torch.arange(height, device=images.device)  # (B, H)
    steps = torch.arange(width, device=images.device)
    # A flip reads the crop's columns right to left: fold it into the column index.
    cols = offsets[:, 1:2] + torch.where(flips[:, None], width - 1 - steps, steps)  # (B, W)
    row_index = rows[:, None, :, None].expand(batch, channels, height, width + 2 * PAD)
    out = padded.gather(2, row_index)
    col_index = cols[:, None, None, :].expand(batch, channels, height, width)
    return out.gather(3, col_index)


class DeviceLoader:
    """Batches of (normalised float images, int64 labels) from a uint8 split kept on `device`.

    Iterating yields one epoch; call `set_epoch(e)` first to change the order and
    augmentation, and set `start_batch` to resume mid-epoch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        process_index: int = 0,
        num_processes: int = 1,
        channels_last: bool = False,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    ):
        if images.dtype != torch.uint8:
            raise TypeError(f"DeviceLoader keeps uint8 images, got {images.dtype}")
        self.images = images.to(device)
        self.labels = labels.to(device=device, dtype=torch.int64)
        self.batch_size = batch_size
        self.train = train
        self.device = torch.device(device)
        self.seed = seed
        self.process_index = process_index
        self.num_processes = num_processes
        self.channels_last = channels_last
        # Normalisation folded into one multiply-add on 0..255 values: x * scale + shift.
        std_t = torch.tensor(std, device=self.device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=self.device).view(1, -1, 1, 1) / std_t
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def dataset_size(self) -> int:
        return len(self.labels)

    def shard_indices(self, epoch: int | None = None) -> torch.Tensor:
        """This process's sample indices for `epoch` (CPU int64; -1 marks evaluation padding)."""
        epoch = self.epoch if epoch is None else epoch
        n, world, rank = len(self.labels), self.num_processes, self.process_index
        if self.train:
            # Same generator on every process => same permutation; the CPU generator makes it device-independent.
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch))
            usable = n - n % world  # equal shard sizes keep every process on the same number of steps
            return order[rank:usable:world]
        per_process = math.ceil(n / world)
        shard = torch.arange(rank * per_process, min(n, (rank + 1) * per_process))
        return F.pad(shard, (0, per_process - len(shard)), value=PADDING_LABEL)

    def __len__(self) -> int:
        shard = (self.dataset_size // self.num_processes) if self.train else math.ceil(self.dataset_size / self.num_processes)
        return math.ceil(shard / self.batch_size)

    def _augmentation(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        # Its own stream per (seed, epoch, process), independent of the shuffle's and of the global RNG.
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + self.epoch) * 1_009 + self.process_index + 1)
        offsets = torch.randint(0, 2 * PAD + 1, (count, 2), generator=generator)
        flips = torch.rand(count, generator=generator) < 0.5
        return offsets.to(self.device, non_blocking=True), flips.to(self.device, non_blocking=True)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 normalised, in channels_last when asked."""
        out = torch.addcmul(self.shift, images.float(), self.scale)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out

    def __iter__(self):
        indices = self.shard_indices().to(self.device)
        if self.train:
            offsets, flips = self._augmentation(len(indices))
        start, self.start_batch = self.start_batch, 0  # a resume offset applies to one epoch only
        for begin in range(start * self.batch_size, len(indices), self.batch_size):
            batch_idx = indices[begin : begin + self.batch_size]
            if self.train:
                images = crop_flip(self.images[batch_idx], offsets[begin : begin + len(batch_idx)], flips[begin : begin + len(batch_idx)])
                labels = self.labels[batch_idx]
            else:
                valid = batch_idx >= 0
                safe_idx = batch_idx.clamp_min(0)
                images = self.images[safe_idx]
                labels = torch.where(valid, self.labels[safe_idx], PADDING_LABEL)
            yield self.normalise(images), labels
