"""A Ray cluster of several nodes on this machine's loopback: `ray start --head` and `ray start --address` in child
processes, stopped with exactly the processes it started. For trying `--engine ray` across nodes, its tests and its
benchmark; a real cluster is started by its own tooling.

Each node is a `ray start --block` process: stopping it (SIGTERM) ends the Ray processes of that node and no other
(`ray stop` would end every Ray process of the user). The cluster keeps its files in its own `temp_dir` and
authenticates nothing (it listens on 127.0.0.1 only).

Example:
    ```python
    >>> with LoopbackCluster(num_nodes=2, cpus_per_node=1) as cluster:
    ...     main([..., "--engine", "ray", "--ray_address", cluster.address])
    ```
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# `ray start` with token authentication off (loopback only) and no 30 s drain when a node is stopped
QUIET_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class LoopbackCluster:
    """Starts `num_nodes` Ray nodes on 127.0.0.1 (the first is the head) and stops them on exit.

    Args:
        num_nodes: Nodes, the head included.
        cpus_per_node: `--num-cpus` of each node.
        env: Extra environment of the nodes (their workers inherit it).
        timeout: Seconds to wait for every node to join.

    Attributes:
        address: `127.0.0.1:<port>`, for `ray.init(address=...)` or `--ray_address`.
    """

    def __init__(self, num_nodes: int = 2, cpus_per_node: int = 1, env: dict | None = None, timeout: float = 90.0):
        self.num_nodes, self.cpus_per_node, self.timeout = num_nodes, cpus_per_node, timeout
        self.env = {**os.environ, **QUIET_ENV, **(env or {})}
        self.address = f"127.0.0.1:{_free_port()}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="clipada-ray-"))
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> "LoopbackCluster":
        try:
            self.start()
        except BaseException:
            self.stop(keep_logs=True)
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def start(self) -> None:
        """Starts the head, waits for its port, starts the other nodes and waits until all have joined.

        Raises:
            RuntimeError: A node exited or did not join within `timeout` (its log is named).
        """
        port = self.address.rsplit(":", 1)[1]
        self._start_node("head", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self.temp_dir}")
        self._wait(lambda: _port_open(port), "the head's port")
        for index in range(1, self.num_nodes):
            self._start_node(f"node{index}", f"--address={self.address}")
        self._wait(lambda: self.alive_nodes() == self.num_nodes, f"{self.num_nodes} nodes")

    def alive_nodes(self) -> int:
        """How many nodes the head counts as alive (asked in a child process, so this one stays free of Ray)."""
        code = "import ray; ray.init(address=%r, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
        result = subprocess.run(
            [sys.executable, "-c", code % self.address], env=self.env, capture_output=True, text=True, timeout=60
        )
        return int(result.stdout.strip().splitlines()[-1]) if result.returncode == 0 and result.stdout.strip() else 0

    def stop(self, keep_logs: bool = False) -> None:
        """Stops the nodes it started (the other nodes first, then the head) and removes its files (but the nodes'
        logs with `keep_logs`)."""
        for process in reversed(self.processes):
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self.processes.clear()
        if not keep_logs:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def _start_node(self, name: str, *flags: str) -> None:
        ray = str(Path(sys.executable).with_name("ray"))
        log = open(self.temp_dir / f"{name}.log", "w")  # noqa: SIM115 - kept open by the child
        command = [ray, "start", *flags, "--node-ip-address=127.0.0.1", f"--num-cpus={self.cpus_per_node}", "--block"]
        self.processes.append(subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT))
        log.close()

    def _wait(self, ready, what: str) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            exited = [process for process in self.processes if process.poll() is not None]
            if exited:
                raise RuntimeError(f"a Ray node exited while waiting for {what}; see the logs in {self.temp_dir}")
            if ready():
                return
            time.sleep(0.5)
        raise RuntimeError(f"timed out after {self.timeout:.0f} s waiting for {what}; see the logs in {self.temp_dir}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _port_open(port: str) -> bool:
    try:
        socket.create_connection(("127.0.0.1", int(port)), timeout=1).close()
        return True
    except OSError:
        return False


__all__ = ["QUIET_ENV", "LoopbackCluster"]
