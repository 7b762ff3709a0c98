"""Picks the data source a configuration names and returns its DataSplits.

Kept apart from lab2.data and lab2.hf_data so that both depend on lab2.data
alone and nothing imports in a cycle: sources -> (data, hf_data) -> data.
"""

from __future__ import annotations

from lab2.data import DataSplits, load_cifar10, make_fake_cifar10, read_cifar10_folder


def load_splits(cfg) -> DataSplits:
    """The data set `cfg` names, truncated to --max_train_samples / --max_eval_samples.

    `datasets` is imported only when --dataset_name asks for it, so runs on
    machines without it (the GPU bench machine) still work.
    """
    if cfg.dataset_name:
        from lab2.hf_data import load_hf_splits

        splits = load_hf_splits(cfg.dataset_name, cfg.image_column, cfg.label_column)
    elif cfg.dataset == "fake":
        folder = make_fake_cifar10(cfg.data_dir, cfg.fake_train_samples, cfg.fake_test_samples, cfg.seed)
        splits = read_cifar10_folder(folder)
    else:
        splits = load_cifar10(cfg.data_dir)
    return splits.truncated(cfg.max_train_samples, cfg.max_eval_samples)
