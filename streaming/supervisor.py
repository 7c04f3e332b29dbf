"""Keeps feed processes running: ``manage.py runfeed <feed> --supervise`` keeps one; ``manage.py
runfeed ccxt --every-exchange`` keeps one per exchange that active ccxt instruments name.

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
from dataclasses import dataclass

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


@dataclass
class _Child:
    process: subprocess.Popen | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float = 0.0


def supervise_each(
    *,
    wanted: Callable[[], set[str] | None],
    command_for: Callable[[str], list[str]],
    name_of: Callable[[str], str],
    write: Callable[[str], None],
    every: float = 5.0,
) -> int:
    """Keep one child per key of ``wanted()`` (asked every ``every`` seconds; None: unknown this
    time, keep what runs), each restarted after a backoff with full jitter when it exits, and
    stopped (SIGTERM) when its key goes; until SIGTERM/SIGINT, which stops them all."""
    stopping = False
    children: dict[str, _Child] = {}

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    next_look = 0.0
    keys: set[str] = set()
    while not stopping:
        now = time.monotonic()
        if now >= next_look:
            found = wanted()
            keys = keys if found is None else found
            next_look = now + every
        for key in sorted(set(children) - keys):
            child = children.pop(key)
            if child.process is not None and child.process.poll() is None:
                child.process.terminate()
                child.process.wait()
            write(f"supervisor: feed {name_of(key)} stopped (no active instrument names it)")
        for key in sorted(keys):
            child = children.setdefault(key, _Child())
            if child.process is not None and child.process.poll() is not None:
                code = child.process.returncode
                healthy = now - child.started > HEALTHY_AFTER
                child.failures = 0 if healthy else child.failures + 1
                delay = restart_delay(child.failures)
                child.process, child.restart_at = None, now + delay
                write(
                    f"supervisor: feed {name_of(key)} exited ({code}); restarting in {delay:.1f} s"
                )
            if child.process is None and now >= child.restart_at:
                child.process, child.started = subprocess.Popen(command_for(key)), now
                write(f"supervisor: feed {name_of(key)} started (pid {child.process.pid})")
        time.sleep(0.1)
    for child in children.values():
        if child.process is not None and child.process.poll() is None:
            child.process.terminate()
    for key, child in children.items():
        if child.process is not None:
            child.process.wait()
        write(f"supervisor: feed {name_of(key)} stopped")
    return 0
