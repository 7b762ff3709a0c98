"""Named presets of training flags (`--recipe`), chosen by experiment; flags given explicitly win.

A recipe is plain data, so the command line can apply it before torch loads.
`fast` reaches the seed recipe's 30-epoch accuracy in half its epochs on the
mini slice; the runs that chose its values are in bench/recipe_tuning.md.
"""

from __future__ import annotations

RECIPES: dict[str, dict[str, object]] = {
    "none": {},  # the seed's recipe: Adam 1e-3, batch 128, constant rate, 30 epochs (the flags' defaults)
    # bench/recipe_tuning.md, run 6: 67.2% at epoch 14 and 66.8% at 15 with flips, against the seed's
    # 66.4% after 30 epochs. Peaks of 7e-4 and 1e-3 beat 2e-3 and 3e-3 by 5-9 points mid-run.
    "fast": {
        "optim": "adamw",
        "learning_rate": 7e-4,
        "weight_decay": 0.05,
        "lr_scheduler_type": "one_cycle",
        "warmup_ratio": 0.2,
        "label_smoothing_factor": 0.1,
        "per_device_train_batch_size": 64,
        "num_train_epochs": 15,
        "tta": True,
    },
}


def recipe_values(name: str, given: set[str] | frozenset[str] = frozenset()) -> dict[str, object]:
    """The flag values recipe `name` sets, less the flags in `given` (those the user gave explicitly)."""
    return {flag: value for flag, value in RECIPES[name].items() if flag not in given}
