"""Keeps one feed process running: ``manage.py runfeed <feed> --supervise``.

For hosts without a process manager that restarts on exit (docker compose has
``restart: unless-stopped``; honcho stops everything when one process exits). The feed runs as a
child process; when it dies for any reason it is started again after a backoff with full jitter
(1 s doubling to 30 s, back to 1 s once a child has run for a minute). Meanwhile no prices
arrive, and pages mark them stale after LIVEFOLIO_STALE_SECONDS.
"""

from __future__ import annotations

import logging
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MIN_DELAY = 1.0
MAX_DELAY = 30.0
HEALTHY_AFTER = 60.0


def restart_delay(failures: int, rand: Callable[[], float] = random.random) -> float:
    """Full jitter: uniform in [MIN_DELAY/2, min(MAX_DELAY, MIN_DELAY * 2^failures)]."""
    cap = min(MAX_DELAY, MIN_DELAY * 2**failures)
    return max(MIN_DELAY / 2, rand() * cap)


def supervise(command: list[str], *, name: str, write: Callable[[str], None]) -> int:
    """Run ``command`` until SIGTERM/SIGINT, restarting it whenever it exits."""
    stopping = False
    child: subprocess.Popen | None = None

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    failures = 0
    while not stopping:
        started = time.monotonic()
        child = subprocess.Popen(command)
        write(f"supervisor: feed {name} started (pid {child.pid})")
        code = child.wait()
        if stopping:
            break
        failures = 0 if time.monotonic() - started > HEALTHY_AFTER else failures + 1
        delay = restart_delay(failures)
        write(f"supervisor: feed {name} exited ({code}); restarting in {delay:.1f} s")
        deadline = time.monotonic() + delay
        while not stopping and time.monotonic() < deadline:
            time.sleep(0.1)
    write(f"supervisor: feed {name} stopped")
    return 0


def child_command(argv: list[str]) -> list[str]:
    """The same ``runfeed`` invocation without ``--supervise``."""
    return [sys.executable, *[a for a in argv if a != "--supervise"]]
