"""How a lab2 process meets a multi-process launch: CPU placement on machines without a GPU, and a lost peer.

Launchers (torchrun, `accelerate launch`, Open MPI, `notebook_launcher`) describe the run to each process
through environment variables; this module reads them before the Accelerator exists. Nothing here imports
torch at module level, so the command line stays quick to answer.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# Fragments of the errors torch.distributed raises when another process of the group vanished: gloo's
# "Connection reset/closed by peer" when its socket closes (the process was killed: measured here within
# seconds), and the timeouts of gloo, the c10d store and the process group after --dist_timeout_s when
# the peer is silent (a cut network, a frozen machine).
PEER_LOST_SIGNS = (
    "connection reset by peer",
    "connection closed by peer",
    "broken pipe",
    "timed out",
    "timeout",
    "connection refused",
    "socket",
)


def launched_world_size(env: MutableMapping[str, str] = os.environ) -> int:
    """The number of processes the launcher started (torchrun, accelerate, notebook_launcher or Open MPI);
    1 without one."""
    for name in ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return 1


def launched_rank(env: MutableMapping[str, str] = os.environ) -> int:
    """This process's global rank as the launcher set it (0 without a launcher)."""
    for name in ("RANK", "OMPI_COMM_WORLD_RANK", "PMI_RANK"):
        if env.get(name, "").isdigit():
            return int(env[name])
    return 0


def _has_accelerator_device() -> bool:
    import torch

    if hasattr(torch, "accelerator"):  # torch >= 2.6: CUDA, ROCm, XPU, MPS, HPU, ...
        return torch.accelerator.is_available()
    return torch.cuda.is_available()


def place_on_cpu_without_gpu(env: MutableMapping[str, str] = os.environ) -> str | None:
    """Before the Accelerator is created: run a multi-process launch on the CPU when the machine has no GPU.

    Accelerate's torchrun path (`accelerate launch` with a MULTI_GPU or multi-node config, and
    `notebook_launcher`) ignores `use_cpu`; on a machine without a GPU each process then falls back to a
    single-process run, and every "node" trains alone and writes the same folder. Setting
    ACCELERATE_USE_CPU=1 makes them one gloo process group instead. Returns the note to print, or None
    when nothing changed (one process, a GPU present, or ACCELERATE_USE_CPU already set).
    """
    if launched_world_size(env) <= 1 or "ACCELERATE_USE_CPU" in env or _has_accelerator_device():
        return None
    env["ACCELERATE_USE_CPU"] = "1"
    return (
        f"note: launched as {launched_world_size(env)} processes on a machine without a GPU; "
        "running them on the CPU (gloo). Set ACCELERATE_USE_CPU=1 yourself to silence this."
    )


def prepare_process(env: MutableMapping[str, str] = os.environ) -> None:
    """What every entry point (the command line, lab2.train) adjusts before its Accelerator exists.

    Today: the CPU placement above, announced once, by rank 0.
    """
    note = place_on_cpu_without_gpu(env)
    if note and launched_rank(env) == 0:
        print(note, flush=True)


def is_peer_lost(error: BaseException, env: MutableMapping[str, str] = os.environ) -> bool:
    """Whether `error` says another process of this distributed run is gone (killed, disconnected, timed out).

    Only multi-process runs qualify, and only torch.distributed's error types (DistError and its
    subclasses) or the RuntimeError gloo raises with a connection or timeout message; anything else is a
    bug and keeps its traceback.
    """
    if launched_world_size(env) <= 1 or not isinstance(error, RuntimeError):
        return False
    import torch.distributed as dist

    if isinstance(error, getattr(dist, "DistError", ())):
        return True
    message = str(error).lower()
    from_the_backend = any(name in message for name in ("gloo", "c10d", "nccl", "processgroup"))
    return from_the_backend and any(sign in message for sign in PEER_LOST_SIGNS)


def is_port_taken(error: BaseException) -> bool:
    """Whether `error` is the rendezvous store failing to listen because its port is taken (EADDRINUSE).

    torch.distributed raises it as a DistNetworkError, which is_peer_lost would otherwise read as a lost peer.
    """
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
