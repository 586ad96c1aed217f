"""Starts the inspection app (`python -m inference.app`) as a real server on 127.0.0.1 for tests."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_SECONDS = 180  # importing torch, transformers and Gradio on a busy 2-core machine


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_app(arguments: list[str], port: int, log_file: Path, env: dict | None = None) -> subprocess.Popen:
    """Starts the app with `arguments` on `port` and waits until it answers; fails with its log when it dies first.

    Args:
        arguments: The app's own flags (`--model_name_or_path ...`, `--examples ...`).
        port: The port to serve on.
        log_file: Where the app's stdout and stderr go.
        env: Variables added to the test's environment (e.g. `TMPDIR`).
    """
    full_env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    full_env.update(env or {})
    command = [sys.executable, "-m", "inference.app", *arguments, "--port", str(port), "--num_threads", "1"]
    with open(log_file, "w") as log:
        server = subprocess.Popen(command, cwd=REPO_ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"the app exited with code {server.returncode}:\n{log_file.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.terminate()
    pytest.fail(f"the app did not answer within {STARTUP_SECONDS} s:\n{log_file.read_text()[-3000:]}")
