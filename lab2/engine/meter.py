"""The epoch's running figures: on-device sums, the progress bar and the train/loss intervals.

The loop hands every step's loss and logits to `TrainMeter.update`, which only adds
tensors on the device: nothing here reads a value back to the host except the
methods whose docstring says "one sync", and the loop calls those every
--logging_steps steps, at checkpoints and at the end of the epoch.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from lab2.errors import Diverged

EARLY_LOSS_STEPS = 5  # the bar's loss before the first --logging_steps interval: every 5 steps


class TrainMeter:
    """This process's sums over the epoch in progress, from the saved Progress when resuming mid-epoch."""

    def __init__(self, accelerator, progress, total_batches: int, description: str, tracking):
        device = accelerator.device
        self.accelerator, self.progress, self.tracking = accelerator, progress, tracking
        # This process's sums (rank 0 also carries a resumed checkpoint's totals; see lab2.engine.resume).
        self.loss_sum = torch.tensor(progress.loss_sum, device=device)  # sum of loss x batch size
        self.correct = torch.tensor(progress.correct, device=device)
        self.seen = progress.seen  # a host int: the batch size is known without a sync
        self.first_bad_step = torch.tensor(-1, device=device)  # the first step with a NaN/inf loss, or -1
        self.interval_loss = torch.zeros((), device=device)  # sum of step losses since interval_start
        self.interval_start = progress.global_step
        self.logged_interval = False  # until the epoch's first --logging_steps interval, update() shows the loss
        self.bar = tqdm(
            total=total_batches,
            initial=progress.batch_in_epoch,
            desc=description,
            disable=not accelerator.is_main_process,
            mininterval=1.0,
            leave=False,
        )

    def update(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """Add one step (the progress already counts it); tensor ops only, no host sync."""
        loss = loss.detach()
        step = self.progress.global_step
        self.first_bad_step = torch.where((self.first_bad_step < 0) & ~torch.isfinite(loss), step, self.first_bad_step)
        self.loss_sum += loss * len(labels)
        self.interval_loss += loss
        self.correct += (logits.argmax(dim=1) == labels).sum()
        self.seen += len(labels)
        self.bar.update(1)
        if not self.logged_interval and not self.bar.disable and self.progress.batch_in_epoch % EARLY_LOSS_STEPS == 0:
            # Before the first interval (--logging_steps may exceed a small epoch) the bar would show no loss:
            # show the epoch's running mean every few steps (one sync each, main process, that stretch only).
            self.bar.set_postfix(loss=f"{float(self.loss_sum) / max(self.seen, 1):.4f}")

    def raise_if_diverged(self) -> None:
        """Raise Diverged if any process saw a non-finite loss (one sync; a gather with >1 process)."""
        first_bad = self.first_bad_step
        if self.accelerator.num_processes > 1:
            first_bad = self.accelerator.gather(first_bad[None]).max()
        bad_step = int(first_bad)
        if bad_step >= 0:
            raise Diverged(bad_step)

    def log_interval(self) -> None:
        """Log the mean loss since the last interval as train/loss, and show it on the bar (one sync)."""
        steps = self.progress.global_step - self.interval_start
        if steps == 0:
            return
        mean_loss = float(self.interval_loss) / steps
        self.tracking.log({"train/loss": mean_loss}, step=self.progress.global_step)
        self.bar.set_postfix(loss=f"{mean_loss:.4f}")
        self.interval_loss.zero_()
        self.interval_start = self.progress.global_step
        self.logged_interval = True

    def totals(self) -> tuple[float, float, float]:
        """(loss_sum, correct, seen) added over all processes (one sync: a reduce)."""
        return sum_over_processes(self.accelerator, self.loss_sum, self.correct, self.seen)

    def close(self) -> None:
        self.bar.close()  # before any message, so it does not share a line with the bar


def sum_over_processes(accelerator, *values) -> tuple[float, ...]:
    """`values` (tensors or numbers) each added over all processes."""
    local = torch.stack([torch.as_tensor(v, dtype=torch.float32, device=accelerator.device) for v in values])
    return tuple(float(t) for t in accelerator.reduce(local, "sum"))
