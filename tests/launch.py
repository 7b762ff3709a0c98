"""Starting launchers (accelerate launch, torchrun, mpirun) from tests so that nothing outlives the test.

A launcher that times out or a test that fails must not leave processes behind: mpirun ignores SIGTERM, and
torchrun starts each worker in a session of its own, so killing the launcher alone orphans its workers. Every
command here starts in a new session (its own process group) and, on any failure or timeout, the group and
every descendant found under /proc get SIGKILL.
"""

import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

# Open MPI's hardware discovery (hwloc's GL plugin) probes X displays on TCP ports 6000-6063 and waits forever
# when anything listens there (TensorBoard's 6006); without the plugin nothing changes for lab2.
MPI_ENV = {"HWLOC_COMPONENTS": "-gl", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}


def free_port() -> int:
    """A TCP port nobody listens on right now, so a test never meets another run on the default 29500."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def descendants(pid: int) -> list[int]:
    """pid and every process below it (children read from /proc, whatever session they moved to)."""
    found = [pid]
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found += descendants(int(child))
    return found


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL the launcher's process group and every descendant, then reap the launcher."""
    if process.poll() is None:
        tree = descendants(process.pid)  # before the kill: orphans are re-parented and lost from the tree
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in tree:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    process.wait(timeout=30)


@contextmanager
def started(args, **popen_kwargs):
    """Popen in a new session; on leaving the block (a failed assert included) whatever still runs is killed."""
    process = subprocess.Popen(list(map(str, args)), start_new_session=True, **popen_kwargs)
    try:
        yield process
    finally:
        kill_tree(process)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def run(args, *, timeout: float, **popen_kwargs) -> subprocess.CompletedProcess:
    """subprocess.run(capture_output=True, text=True) in a new session; a timeout kills the whole tree and raises."""
    with started(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen_kwargs) as process:
        stdout, stderr = process.communicate(timeout=timeout)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
