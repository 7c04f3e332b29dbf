"""What every bench run measures with: child processes and their CPU and RSS, the WebSocket client
processes (bench/clients.py), the sampled window, latency percentiles and the machine's speed."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil
import redis

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A child process with its output in a log file under the run's directory."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, **kw: Any):
        self.name = name
        self.log_path = logs / f"{name}.log"
        self.log = self.log_path.open("w")
        self.popen = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=kw.pop("stdout", self.log), stderr=self.log, **kw
        )
        self.ps = psutil.Process(self.popen.pid)
        self.cpu0 = 0.0
        self.rss_max = 0

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.log.flush()
            if text in self.log_path.read_text():
                return
            if self.popen.poll() is not None:
                sys.exit(f"bench: {self.name} exited:\n{self.log_path.read_text()[-3000:]}")
            time.sleep(0.1)
        sys.exit(f"bench: {self.name} did not say {text!r}:\n{self.log_path.read_text()[-3000:]}")

    def tree(self) -> list[psutil.Process]:
        try:
            return [self.ps, *self.ps.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def cpu(self) -> float:
        total = 0.0
        for p in self.tree():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int:
        total = 0
        for p in self.tree():
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        self.rss_max = max(self.rss_max, total)
        return total

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.log.close()


class ClientProc(Proc):
    """bench/clients.py, driven over stdin/stdout."""

    def __init__(self, name: str, job: Path, result: Path, env: dict[str, str], logs: Path):
        super().__init__(
            name,
            [PYTHON, str(ROOT / "bench" / "clients.py"), str(job), str(result)],
            env,
            logs,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.result = result

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def expect(self, word: str) -> list[str]:
        line = self.popen.stdout.readline().split()
        if not line or line[0] != word:
            sys.exit(
                f"bench: {self.name} said {line!r}, expected {word!r}:\n"
                + self.log_path.read_text()[-3000:]
            )
        return line[1:]

    def finish(self) -> dict[str, Any]:
        self.send("stop")
        self.expect("done")
        self.popen.wait(60)
        self.log.close()
        return json.loads(self.result.read_text())


def start_clients(
    specs: list[dict[str, Any]], procs: int, env: dict[str, str], logs: Path, tag: str
) -> list[ClientProc]:
    clients = []
    for n in range(procs):
        job = logs / f"{tag}-clients-{n}.json"
        job.write_text(json.dumps(specs[n::procs]))
        clients.append(
            ClientProc(f"{tag}-clients-{n}", job, logs / f"{tag}-result-{n}.json", env, logs)
        )
    for c in clients:
        connected, failed = c.expect("connected")
        print(f"{c.name}: {connected} connected, {failed} failed", flush=True)
    return clients


class PostgresBackends:
    """CPU of the PostgreSQL backends serving the bench database (the machine's server is shared,
    so only backends whose title names this database count; one that exits between samples
    loses its last interval)."""

    name = "postgres-backends"

    def __init__(self, dbname: str) -> None:
        self.needle = f" {dbname} "
        self.cpu0: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.rss_max = 0

    def _scan(self) -> dict[int, float]:
        seen = {}
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if cmd.startswith("postgres:") and self.needle in cmd:
                try:
                    t = p.cpu_times()
                    seen[p.pid] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        return seen

    def start(self) -> None:
        self.cpu0 = self._scan()
        self.last = dict(self.cpu0)

    def sample(self) -> None:
        self.last.update(self._scan())

    def cpu(self) -> float:
        return sum(v - self.cpu0.get(pid, 0.0) for pid, v in self.last.items())


class Sampler:
    """CPU seconds and RSS of each process between ``start`` and ``stop``; Redis commands/s."""

    def __init__(
        self, procs: list[Proc], redis_client: redis.Redis, hooks: list[Any] | None = None
    ) -> None:
        self.procs = procs
        self.redis = redis_client
        self.postgres = PostgresBackends(urlsplit(os.environ["DATABASE_URL"]).path.lstrip("/"))
        self.hooks = hooks or []  # objects with window_start() / window_end(): edges of the window
        self.speed: list[float] = []  # speed_probe() once a second through the window

    def start(self) -> None:
        for hook in self.hooks:
            hook.window_start()
        self.t0 = time.monotonic()
        self.cmd0 = self.redis.info("stats")["total_commands_processed"]
        self.postgres.start()
        for p in self.procs:
            p.cpu0 = p.cpu()
            p.rss()

    def sample(self) -> None:
        self.speed.append(speed_probe())
        self.postgres.sample()
        for p in self.procs:
            p.rss()

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.t0
        for hook in self.hooks:
            hook.window_end()
        cmds = self.redis.info("stats")["total_commands_processed"] - self.cmd0
        self.postgres.sample()
        procs = {}
        for p in self.procs:
            cpu = p.cpu() - p.cpu0
            procs[p.name] = {
                "cpu_s": round(cpu, 2),
                "cpu_pct": round(100 * cpu / wall, 1),
                "rss_mib": round(p.rss() / 2**20, 1),
                "rss_max_mib": round(p.rss_max / 2**20, 1),
            }
        pg = self.postgres.cpu()
        procs[self.postgres.name] = {
            "cpu_s": round(pg, 2),
            "cpu_pct": round(100 * pg / wall, 1),
            "rss_mib": None,
            "rss_max_mib": None,
        }
        return {
            "wall_s": round(wall, 2),
            "redis_cmds_per_s": round(cmds / wall),
            "procs": procs,
            "machine_speed": speed_summary(self.speed) if self.speed else None,
        }


def measure_window(clients: list[ClientProc], sampler: Sampler, seconds: float) -> None:
    for c in clients:
        c.send("measure")
    for c in clients:
        c.expect("measuring")
    sampler.start()
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        sampler.sample()
    for c in clients:
        c.send("pause")
    for c in clients:
        c.expect("paused")


# ---------------------------------------------------------------- results


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"n": 0, "p50_ms": None, "p90_ms": None, "p99_ms": None, "max_ms": None}
    values = sorted(values)

    def at(q: float) -> float:
        return round(1000 * values[min(len(values) - 1, int(q * len(values)))], 1)

    return {
        "n": len(values),
        "p50_ms": at(0.5),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "max_ms": round(1000 * values[-1], 1),
    }


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    latencies = [x for r in results for x in r["latencies"]]
    seconds = max((r["seconds"] for r in results), default=0) or 1
    messages = sum(r["messages"] for r in results)
    return {
        "clients": sum(r["clients"] for r in results),
        "connected": sum(r["connected"] for r in results),
        "connect_errors": sum(r["connect_error_count"] for r in results),
        "connect_error_samples": [e for r in results for e in r["connect_errors"]][:5],
        "closed_early": sum(r["closed_early"] for r in results),
        "seq_errors": sum(r["seq_errors"] for r in results),
        "messages": messages,
        "msgs_per_s": round(messages / seconds, 1),
        "bytes_per_msg": round(sum(r["bytes"] for r in results) / messages) if messages else None,
        "latency": percentiles(latencies),
        # Quotes only: the feed runner's flush (``received``) -> client, without the window's wait.
        "flush_latency": percentiles([x for r in results for x in r.get("flush_latencies", ())]),
        # Valuations only: the worker's ``valued_at`` (its pass began; floor: published) -> client.
        "valued_latency": percentiles([x for r in results for x in r.get("valued_latencies", ())]),
        "last": {k: v for r in results for k, v in r["last"].items()},
    }


def per_server_cpu(run: dict[str, Any], server_prefixes: tuple[str, ...]) -> float | None:
    cpu = sum(v["cpu_s"] for k, v in run["procs"].items() if k.startswith(server_prefixes))
    return round(run["delivered"]["messages"] / cpu, 1) if cpu else None


class TickRate:
    """A tick count's rate over the measured window: ``read()`` gives (count, time) or None."""

    first: tuple[int, Any] | None = None
    last: tuple[int, Any] | None = None

    def read(self) -> tuple[int, Any] | None:
        raise NotImplementedError

    def window_start(self) -> None:
        self.first = self.read()

    def window_end(self) -> None:
        self.last = self.read()

    def ticks_per_s(self) -> float | None:
        if not (self.first and self.last) or self.last[1] <= self.first[1]:
            return None
        elapsed = self.last[1] - self.first[1]
        seconds = elapsed.total_seconds() if isinstance(elapsed, timedelta) else elapsed
        return round((self.last[0] - self.first[0]) / seconds, 1)


_CENT = Decimal("0.01")

_ROW = dict.fromkeys(range(27))

_QUANTITIES = [Decimal(i % 997 + 1) / 100 for i in range(2_000)]


def speed_probe() -> float:
    """CPU µs per step of the kind of Python a valuation is made of (Decimal products, rounding
    and formatting, dict copies): ~2,000 steps, a few ms. Measured in this thread's CPU time, so
    waiting for a core does not count, only how fast the core runs (lower is faster)."""
    price = Decimal("1234.5678")
    started = time.thread_time()
    for quantity in _QUANTITIES:
        copy = _ROW.copy()
        copy[0] = str((quantity * price).quantize(_CENT))
        copy[1] = str(((quantity * price - quantity) / price * 100).quantize(_CENT))
    return (time.thread_time() - started) / len(_QUANTITIES) * 1e6


def speed_summary(probes: list[float]) -> dict[str, Any]:
    ordered = sorted(probes)
    return {
        "median_us": round(ordered[len(ordered) // 2], 3),
        "min_us": round(ordered[0], 3),
        "max_us": round(ordered[-1], 3),
        "probes": len(ordered),
    }


def git_revision() -> str:
    """The checkout's ``git describe`` (with ``-dirty``), for a result's JSON."""
    rev = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    return rev.stdout.strip()
