"""Several CPU processes through the launchers users run: `accelerate launch` over Open MPI, and two nodes.

The two-node test runs each node in its own network namespace with its own address (a veth pair between
them) when this machine allows it (root, `ip netns`), and on loopback otherwise.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import contextmanager

import pytest
import torch
from conftest import BIN, REPO, assert_clean_error, cli_env, run_cli
from launch import MPI_ENV, descendants, free_port
from saved_weights import evaluate_saved_weights

from lab2.engine.distributed import (
    is_peer_lost,
    is_port_taken,
    peer_lost_message,
    place_on_cpu_without_gpu,
    port_taken_message,
)

DIST_TIMEOUT_S = 20


# What gloo raised on the surviving node when the other was killed (torch 2.14, measured here).
GLOO_RESET = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error [127.0.0.1]:52405: "
    "Connection reset by peer. This is typically caused by a remote worker hanging or bugs in the application. "
    "Check the logs of the remote worker before reporting an error. GLHF!"
)


def test_a_lost_peer_is_told_from_a_bug():
    two = {"WORLD_SIZE": "2", "RANK": "1"}
    assert is_peer_lost(RuntimeError(GLOO_RESET), two)
    assert is_peer_lost(
        RuntimeError(
            "[gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 20000ms for recv operation to complete"
        ),
        two,
    )
    assert is_peer_lost(torch.distributed.DistBackendError("anything the backend says"), two)
    assert not is_peer_lost(RuntimeError(GLOO_RESET), {})  # one process: nobody to lose, so a bug
    assert not is_peer_lost(RuntimeError("DataLoader worker (pid 1) timed out"), two)  # not from torch.distributed
    assert not is_peer_lost(ValueError(GLOO_RESET), two)
    message = peer_lost_message(RuntimeError(GLOO_RESET), "runs/x", two)
    assert "2-process run (rank 1 saw: Read error [127.0.0.1]:52405: Connection reset by peer)" in message
    assert (
        "GLHF" not in message
        and "--output_dir runs/x --resume_from_checkpoint latest" in message
        and "\n" not in message
    )


@pytest.mark.skipif(torch.accelerator.is_available(), reason="the CPU placement applies to machines without a GPU")
def test_a_multi_process_launch_without_a_gpu_goes_to_the_cpu():
    env = {"WORLD_SIZE": "2"}
    assert "running them on the CPU (gloo)" in place_on_cpu_without_gpu(env) and env["ACCELERATE_USE_CPU"] == "1"
    assert place_on_cpu_without_gpu(env) is None  # already set: left alone
    assert (
        place_on_cpu_without_gpu({"OMPI_COMM_WORLD_SIZE": "2", "ACCELERATE_USE_CPU": "0"}) is None
    )  # the user's choice
    single = {}
    assert place_on_cpu_without_gpu(single) is None and single == {}  # one process: nothing to place


@contextmanager
def listening(port: int):
    """A TCP listener on 127.0.0.1:port for the block (TensorBoard's 6006, another run's store)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", port))
        server.listen()
        yield


@pytest.fixture
def tensorboard_port():
    """127.0.0.1:6006 listened on, as by TensorBoard: the port Open MPI's hwloc GL plugin hung on."""
    try:
        with listening(6006):
            yield
    except OSError as error:
        pytest.skip(f"127.0.0.1:6006 is taken by another program ({error.strerror}); it must be ours to close")


def mpi_launch(port: int, *flags) -> list[str]:
    """`accelerate launch` with multi_cpu.yaml (Open MPI) on `port`, as the README writes it."""
    head = [BIN / "accelerate", "launch", "--quiet", "--config_file", "accelerate_configs/multi_cpu.yaml"]
    return list(map(str, [*head, "--main_process_port", port, "train_accelerate.py", *flags]))


def mpi_env() -> dict:
    env = cli_env(**MPI_ENV)  # HWLOC_COMPONENTS=-gl, as the Makefile exports it
    env.pop("OMP_NUM_THREADS", None)  # threads per rank as the config documents: Accelerate's cores / ranks
    return env


needs_mpirun = pytest.mark.skipif(
    shutil.which("mpirun") is None, reason="Open MPI is not installed (apt-get install openmpi-bin; .ci/run does)"
)


@pytest.mark.slow
@needs_mpirun
def test_accelerate_launch_multi_cpu_trains_two_ranks_through_open_mpi(mini_dir, tmp_path, tensorboard_port):
    out = tmp_path / "mpi"
    flags = ["--data_dir", mini_dir, "--max_train_samples", 512, "--max_eval_samples", 1001, "--num_train_epochs", 1]
    command = mpi_launch(free_port(), *flags, "--output_dir", out, "--report_to", "none")
    # Before HWLOC_COMPONENTS=-gl, mpirun waited forever here, with TensorBoard's port listened on.
    result = run_cli(command, env=mpi_env(), timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["num_eval_samples"] == 1001
    assert sum(map(sum, summary["confusion_matrix"])) == 1001  # no padding, no duplicates
    assert evaluate_saved_weights(out, mini_dir, max_eval=1001).accuracy == summary["final_eval_acc"]
    assert result.stdout.count("done: final eval accuracy") == 1  # rank 0 alone reports and writes
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


@needs_mpirun
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_mpirun_starts_in_the_makefiles_environment_while_tensorboard_listens(tensorboard_port, tmp_path):
    """`make train` with multi_cpu.yaml starts mpirun in the Makefile's environment: it must not hang on 6006."""
    probe = tmp_path / "probe.mk"
    probe.write_text("mpi-probe:\n\tmpirun -n 1 hostname\n")
    env = cli_env()
    for name in ("HWLOC_COMPONENTS", "OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"):
        env.pop(name, None)  # the Makefile's own settings only
    # Before the Makefile exported HWLOC_COMPONENTS=-gl this waited forever (killed whole at the timeout).
    result = run_cli(["make", "-s", "-f", "Makefile", "-f", probe, "mpi-probe"], env=env, timeout=60)
    assert result.returncode == 0 and result.stdout.strip(), result.stdout + result.stderr


# What torch raised on rank 0 when another program held MASTER_PORT (torch 2.14, measured here).
EADDRINUSE = (
    "The server socket has failed to listen on any local network address. port: 29500, useIpv6: false, "
    "code: -98, name: EADDRINUSE, message: address already in use"
)


def test_a_taken_port_is_told_from_a_lost_peer():
    assert is_port_taken(torch.distributed.DistNetworkError(EADDRINUSE))
    assert not is_port_taken(RuntimeError(GLOO_RESET))
    message = port_taken_message({"MASTER_PORT": "29500", "MASTER_ADDR": "127.0.0.1"})
    assert "port 29500 on 127.0.0.1 is already in use" in message and "--main_process_port <port>" in message


@needs_mpirun
def test_a_taken_port_is_named_with_how_to_choose_another(mini_dir, tmp_path):
    port = free_port()
    out = tmp_path / "never"
    with listening(port):  # another run's store holds the port
        result = run_cli(mpi_launch(port, "--data_dir", mini_dir, "--output_dir", out), env=mpi_env(), timeout=300)
    assert_clean_error(result, f"port {port}", "already in use", "--main_process_port")
    assert "lost contact" not in result.stdout + result.stderr and not out.exists()


# --------------------------------------------------------------------------- two nodes


class TwoNodes:
    """Two "machines" on this one: network namespaces joined by a veth pair (as root), or plain loopback."""

    def __init__(self, isolated: bool):
        self.isolated = isolated
        tag = os.getpid() % 100_000
        self.namespaces = [f"lab2-{tag}-node0", f"lab2-{tag}-node1"]
        self.links = [f"l2v{tag}a", f"l2v{tag}b"]  # interface names: at most 15 characters
        self.addresses = ["10.231.0.1", "10.231.0.2"] if isolated else ["127.0.0.1", "127.0.0.1"]
        self.port = 29500 if isolated else free_port()  # a namespace has ports of its own
        self.launchers: dict[int, subprocess.Popen] = {}  # node rank -> its latest launcher
        self.started: list[subprocess.Popen] = []

    def create(self) -> None:
        """Namespaces, the veth pair between them, addresses, loopback up; raises CalledProcessError when not
        permitted."""
        ns0, ns1 = self.namespaces
        link0, link1 = self.links
        for args in (
            ["netns", "add", ns0],
            ["netns", "add", ns1],
            ["link", "add", link0, "type", "veth", "peer", "name", link1],
            ["link", "set", link0, "netns", ns0],
            ["link", "set", link1, "netns", ns1],
            ["-n", ns0, "addr", "add", f"{self.addresses[0]}/24", "dev", link0],
            ["-n", ns1, "addr", "add", f"{self.addresses[1]}/24", "dev", link1],
            ["-n", ns0, "link", "set", link0, "up"],
            ["-n", ns1, "link", "set", link1, "up"],
            ["-n", ns0, "link", "set", "lo", "up"],
            ["-n", ns1, "link", "set", "lo", "up"],
        ):
            subprocess.run(["ip", *args], check=True, capture_output=True, text=True)

    def delete(self) -> None:
        for name in self.namespaces:  # deleting a namespace deletes its end of the veth pair, and so the pair
            subprocess.run(["ip", "netns", "delete", name], capture_output=True)

    def launch(self, rank: int, flags: list) -> "NodeOutput":
        """Start node `rank`'s `accelerate launch` with the two-node CPU config; its output is read as it comes."""
        command = [
            str(BIN / "accelerate"),
            "launch",
            "--config_file",
            "accelerate_configs/multi_node_cpu.yaml",
            "--machine_rank",
            str(rank),
            "--main_process_ip",
            self.addresses[0],
            "--main_process_port",
            str(self.port),
            "train_accelerate.py",
            *map(str, flags),
        ]
        if self.isolated:
            command = ["ip", "netns", "exec", self.namespaces[rank], *command]
        # Both nodes share this machine's cores: one thread each (a real node would use all of its own).
        env = cli_env(OMP_NUM_THREADS="1")
        env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
        if torch.cuda.is_available():
            env["ACCELERATE_USE_CPU"] = "1"  # without a GPU lab2 chooses the CPU by itself (tested here)
        if self.isolated:
            env["GLOO_SOCKET_IFNAME"] = self.links[rank]  # gloo's traffic goes over the node's own interface
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self.launchers[rank] = process
        self.started.append(process)
        return NodeOutput(process)

    def processes(self, rank: int) -> list[int]:
        """Every process of node `rank`: the launcher and its workers
        (torchrun starts each worker in a session of its own)."""
        if self.isolated:
            listed = subprocess.run(
                ["ip", "netns", "pids", self.namespaces[rank]], capture_output=True, text=True
            ).stdout
            return [int(pid) for pid in listed.split()]
        return descendants(self.launchers[rank].pid)

    def kill(self, rank: int) -> None:
        """Node `rank` dies: SIGKILL to all of its processes at once."""
        for pid in self.processes(rank):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def stop_all(self) -> None:
        for rank in self.launchers:
            self.kill(rank)
        for process in self.started:
            process.wait(timeout=30)


class NodeOutput:
    """A launcher's merged stdout/stderr, read on a thread into (time, line) pairs."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append((time.time(), line))

    def wait(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self.thread.join(timeout=10)
        return code

    @property
    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def first(self, fragment: str) -> float | None:
        """When a line holding `fragment` arrived."""
        return next((at for at, line in self.lines if fragment in line), None)


@pytest.fixture(scope="module")
def namespace_error() -> str | None:
    """None when this machine lets us give each node its own network namespace; else the exact error."""
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = TwoNodes(isolated=True)
    try:
        probe.create()
        return None
    except subprocess.CalledProcessError as error:
        return f"`{' '.join(error.cmd)}` failed: {error.stderr.strip()}"
    finally:
        probe.delete()


@pytest.mark.slow
@pytest.mark.parametrize("network", ["netns", "loopback"])
def test_two_nodes_train_exactly_write_once_and_report_a_lost_node(network, namespace_error, mini_dir, tmp_path):
    if network == "netns" and namespace_error:
        pytest.skip(f"network namespaces are not permitted here ({namespace_error}); the loopback variant runs instead")
    if network == "loopback" and not namespace_error:
        pytest.skip("the netns variant runs here: each node with its own namespace and address covers loopback")
    nodes = TwoNodes(isolated=network == "netns")
    out = tmp_path / "two-nodes"
    common = [
        "--data_dir",
        mini_dir,
        "--max_train_samples",
        256,
        "--max_eval_samples",
        1001,
        "--per_device_train_batch_size",
        64,
        "--dist_timeout_s",
        DIST_TIMEOUT_S,
        "--output_dir",
        out,
    ]
    if nodes.isolated:
        nodes.create()
    try:
        # 1. Train one epoch as two nodes, one process each, W&B offline.
        logs = [nodes.launch(rank, [*common, "--num_train_epochs", 1]) for rank in (0, 1)]
        codes = [log.wait(timeout=400) for log in logs]
        assert codes == [0, 0], logs[0].text + logs[1].text
        summary = json.loads((out / "summary.json").read_text())
        assert summary["world_size"] == 2 and summary["num_eval_samples"] == 1001
        assert sum(map(sum, summary["confusion_matrix"])) == 1001  # exact over the two nodes
        both = logs[0].text + logs[1].text
        assert both.count("done: final eval accuracy") == 1 and both.count("161,163,264") == 1  # rank 0 alone
        assert (
            len(list((out / "wandb").glob("offline-run-*"))) == 1
            and len((out / "metrics.jsonl").read_text().splitlines()) == 1
        )
        if not torch.cuda.is_available():
            assert logs[0].text.count("running them on the CPU (gloo)") == 1
        finished = (out / "summary.json").read_bytes(), (out / "model.safetensors").read_bytes()

        # 2. Resume on both nodes for more epochs, then node 1 dies once training is under way again.
        logs = [
            nodes.launch(
                rank, [*common, "--num_train_epochs", 50, "--resume_from_checkpoint", "latest", "--report_to", "none"]
            )
            for rank in (0, 1)
        ]
        deadline = time.time() + 300
        while (
            len((out / "metrics.jsonl").read_text().splitlines()) < 2
            and time.time() < deadline
            and logs[0].process.poll() is None
        ):
            time.sleep(0.1)
        assert len((out / "metrics.jsonl").read_text().splitlines()) >= 2, logs[0].text + logs[1].text
        killed_at = time.time()
        nodes.kill(1)
        code = logs[0].wait(timeout=DIST_TIMEOUT_S + 60)
        text = logs[0].text
        assert code != 0, text
        lost = logs[0].first("lab2: error: lost contact with another process of this 2-process run")
        assert lost is not None, text
        assert lost - killed_at < DIST_TIMEOUT_S, text  # node 0 said so within --dist_timeout_s
        assert "exitcode  : 5" in text  # torchrun's report carries lab2's exit code for a lost peer
        assert not [line for line in text.splitlines() if 'File "' in line and "/lab2/" in line], (
            text
        )  # no traceback from lab2
        # The finished first run's results were not touched by the failed continuation.
        assert ((out / "summary.json").read_bytes(), (out / "model.safetensors").read_bytes()) == finished
    finally:
        try:
            nodes.stop_all()
        finally:
            if nodes.isolated:
                nodes.delete()
