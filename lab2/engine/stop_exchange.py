"""Whether any process was asked to stop, answered within a step without a blocking collective every step.

A signal may reach one process and not the others (Ctrl-C in one terminal, a scheduler that signals one rank),
and every process must leave at the same step: the next step's gradient all-reduce would wait forever for a rank
that left. So the processes agree on a stop through a MAX all-reduce of their flags. A blocking one every step
would stall the loop on the slowest rank twice per step; instead each step starts one asynchronously and reads
the one started a step earlier, which has long arrived by then. All processes read the same answer at the same
step, so they stop together, at most two steps after the signal (measured in tests/test_stop_latency.py).

Collectives must be issued in the same order on every process, so the decision to start one never depends on
timing: every process starts exactly one per step, and settles the pending one at the end of an epoch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class StopExchange:
    """The stop flag of one run; `stop` is the StopRequest its signal handlers set."""

    def __init__(self, accelerator, stop):
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
        """Wait for the pending exchange, if any, and return its answer. Blocking only when one is still in
        flight; the loop calls it once a step for the previous step's exchange and once at the end of an epoch."""
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
