"""``verifier serve --workers N``: N worker processes sharing one port (SO_REUSEPORT).

The supervisor starts each worker as ``python -m verifier serve ... --worker`` with
``PROMETHEUS_MULTIPROC_DIR`` set, so that /metrics sums counters over all workers. It
forwards SIGTERM/SIGINT (graceful shutdown) and SIGHUP (reload) to every worker and
restarts a worker that dies unexpectedly, at most once a second.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from types import FrameType

__all__ = ["supervise"]

log = logging.getLogger(__name__)


def supervise(argv: Sequence[str], workers: int, shutdown_timeout: float) -> int:
    """Run ``workers`` copies of ``verifier <argv> --worker`` until told to stop."""
    metrics_dir = tempfile.mkdtemp(prefix="verifier-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    command = [sys.executable, "-m", "verifier", *argv, "--worker"]
    stopping = False

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(command, env=env)  # noqa: S603 - our own interpreter and module

    procs = [start() for _ in range(workers)]
    log.info("workers_started", extra={"workers": workers, "pids": [p.pid for p in procs]})

    def forward(signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        if signum in (signal.SIGTERM, signal.SIGINT):
            stopping = True
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)
    try:
        last_restart = 0.0
        while not stopping:
            time.sleep(0.2)
            for i, proc in enumerate(procs):
                if proc.poll() is not None and not stopping:
                    if time.monotonic() - last_restart < 1.0:
                        continue
                    log.warning("worker_died", extra={"pid": proc.pid, "code": proc.returncode})
                    procs[i] = start()
                    last_restart = time.monotonic()
        deadline = time.monotonic() + shutdown_timeout + 5
        for proc in procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return 0
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
