"""What the loop does every N steps, as a table, and the flow snapshot around the optimizer step.

`PeriodicActions.after_step(step)` runs, in this order, each action whose
interval divides the step: log train/loss, save a checkpoint, evaluate, check
for a stop. The order is part of the contract: trackers see steps in the order
they are logged, and W&B drops a step lower than one it has already seen.
"""

from __future__ import annotations

from contextlib import contextmanager

from lab2.errors import TrainingStopped


class PeriodicActions:
    """The interval table of one run; `trainer` supplies the checkpoint, evaluation and stop flag."""

    def __init__(self, trainer):
        cfg, accelerator = trainer.cfg, trainer.accelerator
        self.trainer, self.accelerator = trainer, accelerator
        self.meter = None  # the epoch's TrainMeter, set by the loop
        self.table = [  # (every N optimizer steps, action); 0 or None switches an action off
            (cfg.logging_steps, self.log_train_loss),
            (cfg.checkpoint_every_steps, self.save_checkpoint),
            (cfg.eval_every_steps, self.evaluate),
            (1, self.stop_if_requested),  # every step: with several processes an async exchange (StopExchange)
        ]

    def after_step(self, step: int) -> None:
        for every, action in self.table:
            if every and step % every == 0:
                action(step)

    def log_train_loss(self, step: int) -> None:
        self.meter.raise_if_diverged()
        self.meter.log_interval()

    def save_checkpoint(self, step: int) -> None:
        self.meter.raise_if_diverged()  # never checkpoint NaN weights
        self.trainer.save_mid_epoch(self.meter)

    def evaluate(self, step: int) -> None:
        self.trainer.evaluate_at_step(step)

    def stop_if_requested(self, step: int) -> None:
        if self.trainer.stop_exchange.requested_after_step():
            self.stop_here()

    def stop_at_epoch_end(self) -> None:
        """The last step's exchange is settled here (blocking, once an epoch): no stop waits for an evaluation."""
        if self.trainer.stop_exchange.settle():
            self.stop_here()

    def stop_here(self) -> None:
        self.meter.raise_if_diverged()
        self.trainer.save_mid_epoch(self.meter)
        raise TrainingStopped(self.trainer.stop.signal_name)


@contextmanager
def flow_snapshot(accelerator, flow, step: int, take: bool):
    """Around optimizer.step(): at a snapshot step, read the (unscaled) gradients before and the update after.

    `flow` is the main process's FlowReporter, or None on other ranks and with --flow_log_steps 0; every rank
    still unscales at a snapshot step, since fp16's unscale is a collective decision. `poll` logs finished
    images at every step and never waits.
    """
    if take:
        accelerator.unscale_gradients()
        if flow is not None:
            flow.before_step()
    yield
    if flow is not None:
        if take:  # file, scalars, histograms, warnings; its images render on the worker thread
            flow.after_step(step)
        flow.poll(step)
