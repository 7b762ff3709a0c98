"""How lab2's processes work together: what the launcher says (process count, rank, CPU placement), a lost peer or
a taken port in one line, and stopping on a signal at the same step in every process (`StopRequest`).

The launchers' environment variables are read before the Accelerator exists; nothing here imports torch at module
level, so the command line stays quick to answer."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import MutableMapping
from contextlib import contextmanager

from lab2.errors import SecondInterrupt

# Fragments of torch.distributed's errors when another process vanished: gloo's "Connection reset/closed by peer"
# once its socket closes (a killed process: within seconds, measured here), and the timeouts of gloo, the c10d
# store and the process group after --dist_timeout_s when the peer is silent (a cut network, a frozen machine).
PEER_LOST_SIGNS = ("connection reset by peer", "connection closed by peer", "broken pipe", "timed out", "timeout")
PEER_LOST_SIGNS += ("connection refused", "socket")


def _launcher_number(env: MutableMapping[str, str], names: tuple[str, ...], default: int) -> int:
    return next((int(env[name]) for name in names if env.get(name, "").isdigit()), default)


def launched_world_size(env: MutableMapping[str, str] = os.environ) -> int:
    """How many processes the launcher (torchrun, accelerate, notebook_launcher, Open MPI) started; 1 without one."""
    return _launcher_number(env, ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"), 1)


def launched_rank(env: MutableMapping[str, str] = os.environ) -> int:
    """This process's global rank as the launcher set it (0 without a launcher)."""
    return _launcher_number(env, ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"), 0)


def place_on_cpu_without_gpu(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Before the Accelerator exists: run a multi-process launch without a GPU as one gloo group on the CPU
    (ACCELERATE_USE_CPU=1); the note to print, or None when nothing changed. Accelerate's torchrun path (`accelerate
    launch` with a MULTI_GPU or multi-node config, `notebook_launcher`) ignores `use_cpu`, so without a GPU every
    process would fall back to training alone, all of them writing the same folder."""
    if launched_world_size(env) <= 1 or "ACCELERATE_USE_CPU" in env:
        return None
    import torch

    # torch >= 2.6 asks about any accelerator (CUDA, ROCm, XPU, MPS, HPU, ...); older ones about CUDA.
    if torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available():
        return None
    env["ACCELERATE_USE_CPU"] = "1"
    return (
        f"note: launched as {launched_world_size(env)} processes on a machine without a GPU; "
        "running them on the CPU (gloo). Set ACCELERATE_USE_CPU=1 yourself to silence this."
    )


def prepare_process(env: MutableMapping[str, str] = os.environ) -> None:
    """What every entry point (the command line, lab2.train) adjusts before its Accelerator exists: the CPU
    placement above, announced once, by rank 0."""
    note = place_on_cpu_without_gpu(env)
    if note and launched_rank(env) == 0:
        print(note, flush=True)


def is_peer_lost(error: BaseException, env: MutableMapping[str, str] = os.environ) -> bool:
    """Whether `error` says another process of this multi-process run is gone (killed, disconnected, timed out):
    a torch.distributed DistError, or gloo's RuntimeError naming a connection or timeout; anything else is a bug
    and keeps its traceback."""
    if launched_world_size(env) <= 1 or not isinstance(error, RuntimeError):
        return False
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    message = str(error).lower()
    from_the_backend = any(name in message for name in ("gloo", "c10d", "nccl", "processgroup"))
    return from_the_backend and any(sign in message for sign in PEER_LOST_SIGNS)


def is_port_taken(error: BaseException) -> bool:
    """Whether `error` is the rendezvous store's port being taken (EADDRINUSE): torch raises a DistNetworkError,
    which is_peer_lost would otherwise read as a lost peer."""
    message = str(error).lower()
    return isinstance(error, RuntimeError) and ("eaddrinuse" in message or "address already in use" in message)


def port_taken_message(env: MutableMapping[str, str] = os.environ) -> str:
    """The one line for a taken rendezvous port: which port, and how to choose another with each launcher."""
    port, address = env.get("MASTER_PORT", "29500"), env.get("MASTER_ADDR", "127.0.0.1")
    return (
        f"port {port} on {address} is already in use (another run or program listens there), so the processes "
        f"could not meet; nothing was trained or written. Choose a free port: `accelerate launch "
        f"--main_process_port <port>`, `torchrun --master_port <port>` or `notebook_launcher(..., use_port=...)`."
    )


def peer_lost_message(error: BaseException, output_dir: str, env: MutableMapping[str, str] = os.environ) -> str:
    """The one line a surviving process prints when a peer is lost: which rank, why, and how to go on."""
    first_line = " ".join(str(error).split("\n", 1)[0].split())
    detail = first_line.split("] ", 1)[-1]  # gloo prefixes its source location in brackets
    detail = detail.split(". ", 1)[0].rstrip(".")  # its first sentence; gloo appends generic advice
    return (
        f"lost contact with another process of this {launched_world_size(env)}-process run "
        f"(rank {launched_rank(env)} saw: {detail[:200]}); training stopped. Restart every node with "
        f"--output_dir {output_dir} --resume_from_checkpoint latest to continue from the last checkpoint."
    )


class StopRequest:
    """SIGINT/SIGTERM set a flag, and every process learns at the same step whether any process got one.

    A signal may reach one process and not the others (Ctrl-C in one terminal, a scheduler that signals one rank),
    and all must leave at the same step: the next gradient all-reduce would wait forever for a rank that left. So
    each step starts an asynchronous MAX all-reduce of the flags and reads the one started a step earlier (why not
    Accelerate's check_trigger(): lab2.engine.loop). A second Ctrl-C stops at once. `progress` (the loop's
    Progress) is only read, to note the step a signal came after.
    """

    def __init__(self, accelerator, progress):
        self.accelerator, self.progress = accelerator, progress
        self.signal_name: str | None = None
        self.received_after_step: int | None = None
        self.pending = None  # the exchange started one step ago: (work or None, result tensor, CUDA event or None)

    def _handler(self, signum, frame):
        if self.signal_name is not None and signum == signal.SIGINT:
            raise SecondInterrupt
        if self.signal_name is None:
            self.received_after_step = self.progress.global_step
        self.signal_name = signal.Signals(signum).name

    @contextmanager
    def installed(self):
        """The handlers, for the `with` block; only the main thread may install them (lab2.train() from another
        thread keeps the caller's)."""
        main = threading.current_thread() is threading.main_thread()
        previous = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def requested_after_step(self) -> bool:
        """Call once per optimizer step on every process, so the collectives come in the same order everywhere.
        One process: the flag itself. Several: the answer of the exchange started a step ago, then a new one."""
        if self.accelerator.num_processes == 1:
            return self.signal_name is not None
        if self.settle():
            return True
        import torch
        import torch.distributed as dist

        device = self.accelerator.device
        # torch.full fills on the device with the value as a kernel argument: no host-to-device copy to wait for.
        flag = torch.full((1,), 1 if self.signal_name else 0, dtype=torch.int32, device=device)
        work = dist.all_reduce(flag, op=dist.ReduceOp.MAX, async_op=True)
        if device.type != "cuda":  # gloo (CPU) and other devices: keep the work and read the tensor next step
            self.pending = (work, flag, None)
            return False
        # NCCL: wait() makes the current stream wait for the reduction (the host goes on); the answer is copied to
        # pinned host memory behind it, and the event marks when it has landed.
        work.wait()
        host = torch.empty(1, dtype=torch.int32, pin_memory=True).copy_(flag, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self.pending = (None, host, copied)
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
