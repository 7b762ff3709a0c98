"""Picks the data source a configuration names (its DataSplits) and the pipeline's DataLoaders.

Kept apart from lab2.data.cifar and lab2.data.hf_datasets so that both depend on lab2.data.cifar
alone and nothing imports in a cycle: sources -> (data, hf_data) -> data.
"""

from __future__ import annotations

from pathlib import Path

from lab2.data.cifar import DataSplits, load_cifar10, read_cifar10_folder, torchvision_loaders
from lab2.data.cifar_files import make_fake_cifar10
from lab2.data.device_dataset import device_loaders
from lab2.errors import UserError


def check_data_dir(data_dir: str) -> None:
    """--data_dir must be a folder, or a path one can be made at: a regular file there is named as such
    (otherwise the download would fail with a puzzling 'File exists')."""
    path = Path(data_dir)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == path else f"is inside {existing}, which is a file"
        raise UserError(
            f"--data_dir {data_dir} {where}, not a folder; point --data_dir at the folder that holds (or will "
            "receive) cifar-10-batches-py/."
        )


def load_splits(cfg) -> DataSplits:
    """The data set `cfg` names, truncated to --max_train_samples / --max_eval_samples.

    `datasets` is imported only when --dataset_name asks for it, so runs on
    machines without it (the GPU bench machine) still work.
    """
    if cfg.dataset_name:
        from lab2.data.hf_datasets import load_hf_splits

        splits = load_hf_splits(cfg.dataset_name, cfg.image_column, cfg.label_column)
    elif cfg.dataset == "fake":
        check_data_dir(cfg.data_dir)
        folder = make_fake_cifar10(cfg.data_dir, cfg.fake_train_samples, cfg.fake_test_samples, cfg.seed)
        splits = read_cifar10_folder(folder)
    else:
        check_data_dir(cfg.data_dir)
        splits = load_cifar10(cfg.data_dir)
    return splits.truncated(cfg.max_train_samples, cfg.max_eval_samples)


def pipeline_loaders(cfg, splits: DataSplits, device, channels_last: bool):
    """(train, eval) DataLoaders of --data_pipeline for `splits`, unprepared: `device` keeps the uint8 data on
    the device and augments whole batches there; `torchvision` is the seed's per-image PIL path."""
    if cfg.data_pipeline == "torchvision":
        return torchvision_loaders(
            splits,
            cfg.per_device_train_batch_size,
            cfg.per_device_eval_batch_size,
            cfg.num_workers,
            cfg.seed,
            drop_last=cfg.dataloader_drop_last,
        )
    return device_loaders(
        splits,
        cfg.per_device_train_batch_size,
        cfg.per_device_eval_batch_size,
        device=device,
        seed=cfg.seed,
        channels_last=channels_last,
        drop_last=cfg.dataloader_drop_last,
    )
