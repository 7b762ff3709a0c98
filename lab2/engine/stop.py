"""Stopping on a signal: the handlers that note a Ctrl-C or SIGTERM, and the agreement of every process to stop.

A signal may reach one process and not the others (Ctrl-C in one terminal, a scheduler that signals one rank),
and every process must leave at the same step: the next step's gradient all-reduce would wait forever for a rank
that left. So the processes agree on a stop through a MAX all-reduce of their flags. Accelerate's
`set_trigger()` / `check_trigger()` does the same with a blocking all-reduce, which would stall every step on the
slowest rank; here each step starts one asynchronously and reads the one started a step earlier, which has long
arrived by then. All processes read the same answer at the same step, so they stop together, at most two steps
after the signal (tests/test_stop_latency.py). Every process starts exactly one exchange per step, so the
collectives are issued in the same order everywhere, whatever the timing.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

import torch
import torch.distributed as dist


class StopRequest:
    """SIGINT/SIGTERM set a flag that the loop checks; a second Ctrl-C stops at once.

    `progress` is the loop's Progress, read (never written) to note the step a signal came after. A signal that
    arrives after the last training step lets the run finish its files, and `finished_note` says so.
    """

    def __init__(self, progress):
        self.progress = progress
        self.signal_name: str | None = None
        self.received_after_step: int | None = None

    def _handler(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.signal_name is None:
            self.received_after_step = self.progress.global_step
        self.signal_name = signal.Signals(signum).name

    def finished_note(self) -> str | None:
        """The line to print when a signal came while the run was finishing, else None."""
        if self.signal_name is None:
            return None
        return (
            f"{self.signal_name} received while finishing; the run is complete "
            "(final checkpoint, weights, figures and report written)."
        )

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self  # only the main thread may install handlers: lab2.train() from a thread keeps the caller's
            return
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


class StopExchange:
    """Whether any process was asked to stop, answered one step later without a blocking collective."""

    def __init__(self, accelerator, stop: StopRequest):
        self.accelerator, self.stop = accelerator, stop
        self.pending = None  # the exchange started at the previous step: (work or None, result tensor, event or None)

    def requested_after_step(self) -> bool:
        """Call once per optimizer step on every process. One process: the flag itself. Several: the answer of
        the exchange started one step ago (True when any process had a signal then), and a new exchange."""
        if self.accelerator.num_processes == 1:
            return self.stop.signal_name is not None
        if self.settle():
            return True
        self._start()
        return False

    def settle(self) -> bool:
        """Wait for the pending exchange, if any, and return its answer (the loop calls it at an epoch's end)."""
        if self.pending is None:
            return False
        work, result, copied = self.pending
        self.pending = None
        if work is not None:
            work.wait()  # gloo: the reduction of a step ago; it finished while this step computed
        if copied is not None:
            copied.synchronize()  # CUDA: waits for the previous step's kernels only, not for this step's
        return bool(result.item())  # a host tensor by now: no device sync

    def _start(self) -> None:
        device = self.accelerator.device
        # torch.full fills on the device with the value as a kernel argument: no host-to-device copy to wait for.
        flag = torch.full((1,), 1 if self.stop.signal_name else 0, dtype=torch.int32, device=device)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        if device.type != "cuda":  # gloo (CPU) and other devices: keep the work and read the tensor next step
            self.pending = (work, flag, None)
            return
        # NCCL: wait() makes the current stream wait for the reduction (the host goes on); the answer is copied
        # to pinned host memory behind it, and the event marks when it has landed.
        work.wait()
        host = torch.empty(1, dtype=torch.int32, pin_memory=True)
        host.copy_(flag, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self.pending = (None, host, copied)
