"""The app in a background process on a free local port (benchmarks, screenshots, tests)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AppServer:
    """Start the app serving `assets` and wait for its first page (`first_page_s`: seconds from launch).

    `command` is how to start it (default `python -m hieratok.explorer`; a clone's tests pass `app/main.py`);
    `env` is added to the environment (e.g. OMP_NUM_THREADS); the server's output goes to `log` (or nowhere)."""

    def __init__(self, assets: Path, log: Path | None = None, command: list[str] | None = None,
                 env: dict[str, str] | None = None, timeout: float = 120.0):
        self.assets = Path(assets)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_DISABLE_TELEMETRY": "1",
               "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        self.log = open(log, "w") if log is not None else subprocess.DEVNULL
        command = command or [sys.executable, "-m", "hieratok.explorer"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen([*command, "--assets", str(assets), "--port", str(self.port)], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(f"the app exited with status {self.proc.returncode}"
                                   + (f"; see {log}" if log else ""))
            try:
                with urllib.request.urlopen(self.url, timeout=2) as r:
                    if r.status == 200:
                        self.first_page_s = time.perf_counter() - t0
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the app did not answer on {self.url} within {timeout:.0f} s"
                           + (f"; see {log}" if log else ""))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        if self.log is not subprocess.DEVNULL:
            self.log.close()
