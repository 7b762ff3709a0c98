"""`--report_to`: which trackers a run logs to, checked before anything heavy loads.

It takes one name, a comma list (`wandb,tensorboard`), `all` or `none`. `all`
means every tracker lab2 supports whose package is installed (Accelerate's
meaning of "all"). A named tracker whose package is missing is a UserError
naming the package to install, since Accelerate would silently drop it.
`log_with_for` turns the value into the Accelerator's `log_with`.
"""

from __future__ import annotations

import importlib.util

from lab2.errors import UserError

# tracker -> (module to import, what to pip install)
TRACKER_PACKAGES = {
    "wandb": ("wandb", "wandb"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "mlflow": ("mlflow", "mlflow-skinny"),
}
REPORT_TO_CHOICES = (*TRACKER_PACKAGES, "all", "none")


def _installed(tracker: str) -> bool:
    return importlib.util.find_spec(TRACKER_PACKAGES[tracker][0]) is not None


def parse_report_to(value: str) -> list[str]:
    """The trackers `value` names, in lab2's order, without repeats; [] for 'none'. Raises UserError for bad input."""
    names = [name.strip().lower() for name in value.split(",") if name.strip()]
    unknown = [name for name in names if name not in REPORT_TO_CHOICES]
    if not names or unknown:
        raise UserError(
            f"--report_to {value!r}: unknown tracker {', '.join(map(repr, unknown)) or '(empty)'}; "
            f"give one or a comma list of {', '.join(TRACKER_PACKAGES)}, or all, or none."
        )
    if "none" in names:
        if len(names) > 1:
            raise UserError(f"--report_to {value!r}: 'none' cannot be combined with trackers; give none alone.")
        return []
    if "all" in names:
        chosen = [tracker for tracker in TRACKER_PACKAGES if _installed(tracker)]
        if not chosen:
            raise UserError(
                "--report_to all: no tracker package is installed; pip install wandb, tensorboard or mlflow-skinny, "
                "or pass --report_to none."
            )
        return chosen
    for tracker in names:
        if not _installed(tracker):
            module, package = TRACKER_PACKAGES[tracker]
            raise UserError(
                f"--report_to {tracker} needs the {module} package, which is not installed: pip install {package} "
                "(or choose another --report_to)."
            )
    return [tracker for tracker in TRACKER_PACKAGES if tracker in names]


def log_with_for(report_to: str) -> list[str] | None:
    """The Accelerator's `log_with` for --report_to (a name, a comma list, all or none)."""
    return parse_report_to(report_to) or None
