"""The Celery side of a run with a feed: the backlog over the run, the batches the worker ran
(bench/worker.py records them) and whether it keeps up with the feed."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

import redis

from bench.processes import percentiles
from streaming import namespace

# "Keeps up": the Celery backlog grows by at most this many tasks over the measured window
# (a worker that keeps up holds one task and maybe one queued) and empties within DRAIN_OK_S
# of the feed stopping.
BACKLOG_GROWTH_OK = 2
DRAIN_OK_S = 5.0


class IngestMonitor:
    """The Celery backlog (``LLEN celery`` + ``HLEN unacked``: queued + taken, not yet acked)
    every 0.2 s from a thread, from the feed's start until the drain ends; the window's edges;
    and at the end the per-batch records bench/worker.py pushed (batches, quotes stored, lag)
    plus the stack's own running totals (streaming/health.py ``record_ingest``)."""

    PERIOD = 0.2

    def __init__(self, redis_url: str) -> None:

        self.redis = redis.Redis.from_url(redis_url, socket_timeout=5)
        self.stack_key = f"{namespace.redis_prefix()}:ingest"
        self.samples: list[tuple[float, int, int]] = []  # (wall time, queued, unacked)
        self.edges: dict[str, float] = {}
        self.stack: dict[str, dict[str, float]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="ingest-monitor", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                pipe = self.redis.pipeline(transaction=False)
                pipe.llen("celery")
                pipe.hlen("unacked")
                queued, unacked = pipe.execute()
                self.samples.append((time.time(), queued, unacked))
            except redis.RedisError:
                pass
            self.stopping.wait(self.PERIOD)

    def _stack_totals(self) -> dict[str, float]:
        raw = self.redis.hgetall(self.stack_key)
        return {k.decode(): float(v) for k, v in raw.items()}

    def window_start(self) -> None:
        self.edges["start"] = time.time()
        self.stack["start"] = self._stack_totals()

    def window_end(self) -> None:
        self.edges["end"] = time.time()
        self.stack["end"] = self._stack_totals()

    def feed_stopped(self) -> None:
        self.edges["feed_stopped"] = time.time()

    def stop(self) -> None:
        self.edges["drain_end"] = time.time()
        self.stopping.set()
        self.thread.join(5)

    def summary(self, drain_s: float | None, drain_limit: float) -> dict[str, Any]:
        from bench.worker import BATCHES_KEY

        t0, t1 = self.edges["start"], self.edges["end"]
        seconds = t1 - t0
        window = [(t, q + u) for t, q, u in self.samples if t0 <= t <= t1]
        backlog = [b for _, b in window]
        slope = None
        if len(window) >= 2:  # least squares: tasks per second the backlog grew
            mt = sum(t for t, _ in window) / len(window)
            mb = sum(backlog) / len(backlog)
            var = sum((t - mt) ** 2 for t, _ in window)
            slope = sum((t - mt) * (b - mb) for t, b in window) / var if var else 0.0
        records = [json.loads(x) for x in self.redis.lrange(BATCHES_KEY, 0, -1)]
        inside = [x for x in records if t0 <= x["t"] <= t1]
        stopped = self.edges.get("feed_stopped", t1)
        after = [x for x in records if x["t"] > stopped]
        after_s = self.edges.get("drain_end", stopped) - stopped
        backlog_after = self.samples[-1][1] + self.samples[-1][2] if self.samples else None
        start, end = self.stack.get("start", {}), self.stack.get("end", {})
        stack_batches = end.get("batches", 0) - start.get("batches", 0)
        stack_seconds = end.get("seconds", 0) - start.get("seconds", 0)
        drained = backlog_after == 0 and drain_s is not None and drain_s < drain_limit
        growth = backlog[-1] - backlog[0] if backlog else None
        keeps_up = (
            growth is not None
            and growth <= BACKLOG_GROWTH_OK
            and drained
            and drain_s is not None
            and drain_s <= DRAIN_OK_S
        )
        drain_rate = len(after) / after_s if after_s > 0 else 0
        return {
            "backlog": {
                "start": backlog[0] if backlog else None,
                "max": max(backlog) if backlog else None,
                "end": backlog[-1] if backlog else None,
                "growth_per_s": None if slope is None else round(slope, 2),
                "samples": len(backlog),
            },
            "drain_s": drain_s,
            "drained": drained,
            "backlog_after_drain": backlog_after,
            # Not drained: at the rate the worker emptied it after the feed stopped.
            "drain_left_estimate_s": (
                round(backlog_after / drain_rate, 1)
                if backlog_after and drain_rate
                else (None if backlog_after else 0)
            ),
            "keeps_up": keeps_up,
            "batches_per_s": round(len(inside) / seconds, 2),
            "items_per_s": round(sum(x["items"] for x in inside) / seconds, 1),
            "quotes_stored_per_s": round(sum(x["changed"] or 0 for x in inside) / seconds, 1),
            "items_per_batch": (
                round(sum(x["items"] for x in inside) / len(inside), 1) if inside else None
            ),
            "task": percentiles([x["run_s"] for x in inside if x["run_s"] is not None]),
            "lag": percentiles([x["lag_s"] for x in inside if x["lag_s"] is not None]),
            # A slow worker may finish few batches inside the window: every batch finished from
            # the window's start to the end of the drain.
            "lag_through_drain": percentiles(
                [x["lag_s"] for x in records if x["t"] >= t0 and x["lag_s"] is not None]
            ),
            "failed_tasks": sum(1 for x in inside if x["state"] != "SUCCESS"),
            "worker_time": worker_time(inside, t0, seconds),
            "stack_metrics": {
                "batches_per_s": round(stack_batches / seconds, 2),
                "mean_task_s": round(stack_seconds / stack_batches, 4) if stack_batches else None,
                "last_lag_s": end.get("lag"),
            },
        }


def worker_time(records: list[dict[str, Any]], t0: float, seconds: float) -> dict[str, Any]:
    """Where each worker's wall time went between its ingest tasks (those finished after ``t0``):
    its busy share of the window and, per gap between two of its tasks, the part before the feed
    sent the next batch (the task's end, the acknowledgement, the feed noticing) and the part
    after (Celery bringing the batch to the worker). ``flush -> start`` is the batch's lag minus
    its run time; the flush stamp (``received``) is to the millisecond, so the split is too.
    All three are over the same gaps: those before a batch with ticks (a settling batch has no
    flush stamp)."""
    by_worker: dict[Any, list[dict[str, Any]]] = {}
    for x in records:
        by_worker.setdefault(x.get("worker"), []).append(x)
    busy, gaps, before, after = [], [], [], []
    for worker in sorted(by_worker, key=str):
        tasks = sorted(by_worker[worker], key=lambda x: x["t"])
        ran = [min(x["run_s"], x["t"] - t0) for x in tasks if x["run_s"] is not None]
        busy.append(round(100 * sum(ran) / seconds, 1))
        for previous, x in itertools.pairwise(tasks):
            if x["run_s"] is None or x["lag_s"] is None or not x["items"]:
                continue
            gap = x["t"] - x["run_s"] - previous["t"]
            gaps.append(gap)
            after.append(x["lag_s"] - x["run_s"])
            before.append(gap - after[-1])
    return {
        "busy_pct": busy,
        "gap": percentiles(gaps),
        "end_to_flush": percentiles(before),
        "flush_to_start": percentiles(after),
    }


def ingest_lines(ingest: dict[str, Any], lf: dict[str, Any]) -> list[str]:
    """The Celery side of a run: does the worker keep up with the feed?"""
    backlog, lag, task = ingest["backlog"], ingest["lag"], ingest["task"]
    spent = ingest["worker_time"]
    late = ingest["lag_through_drain"]
    workers = [p["cpu_pct"] for name, p in lf["procs"].items() if name.startswith("worker")]
    feed_cpu = lf["procs"].get("feed", {}).get("cpu_pct")
    if ingest["drained"]:
        drain = f"drained {ingest['drain_s']} s after the feed stopped"
    else:
        drain = (
            f"NOT drained after {ingest['drain_s']} s: {ingest['backlog_after_drain']} tasks "
            f"left, ~{ingest['drain_left_estimate_s']} s more at the drain's pace"
        )
    verdict = "yes" if ingest["keeps_up"] else "NO"
    return [
        "",
        f"ingest: feed {ingest['feed_ticks_per_s']} ticks/s at {feed_cpu}% "
        f"CPU; worker CPU {' + '.join(f'{w}%' for w in workers)}",
        f"  worker: {ingest['batches_per_s']} batches/s of {ingest['items_per_batch']} quotes, "
        f"{ingest['quotes_stored_per_s']} quotes stored/s; task p50 {task['p50_ms']} ms, "
        f"p99 {task['p99_ms']} ms; {ingest['failed_tasks']} failed",
        f"  worker time: busy {' + '.join(f'{b}%' for b in spent['busy_pct'])} of the window; "
        f"between two tasks p50 {spent['gap']['p50_ms']} ms (task end -> next flush "
        f"{spent['end_to_flush']['p50_ms']}, flush -> task start "
        f"{spent['flush_to_start']['p50_ms']}), p90 {spent['gap']['p90_ms']} ms",
        f"  celery backlog (queued + unacked): start {backlog['start']}, max {backlog['max']}, "
        f"end {backlog['end']}, growth {backlog['growth_per_s']} tasks/s; {drain}",
        f"  ingest lag (feed flush -> task done): p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms,"
        f" max {lag['max_ms']} ms over {lag['n']} batches; counting the drain: p50 "
        f"{late['p50_ms']} ms, p99 {late['p99_ms']} ms over {late['n']}",
        f"  keeps up: {verdict} (backlog growth <= {BACKLOG_GROWTH_OK} tasks over the window "
        f"and drained within {DRAIN_OK_S:g} s)",
    ]
