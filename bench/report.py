"""A run's result as the table bench/run.py prints."""

from __future__ import annotations

from typing import Any

from bench.backlog import ingest_lines
from bench.scenarios import SCENARIOS


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def table(result: dict[str, Any]) -> str:
    lf, fl = result["livefolio"], result.get("floor")
    rows = [("", "livefolio", "floor", "ratio")]

    def row(label: str, get) -> None:
        a = get(lf)
        b = get(fl) if fl else None
        rows.append(
            (
                label,
                "-" if a is None else str(a),
                "-" if b is None else str(b),
                "-" if not fl else str(ratio(a, b)),
            )
        )

    scenario = SCENARIOS[result["args"]["scenario"]]
    row("clients connected", lambda x: x["delivered"]["connected"])
    if scenario.feed:
        row("feed ticks/s achieved", lambda x: x.get("feed_ticks_per_s"))
    row("delivered msgs/s", lambda x: x["delivered"]["msgs_per_s"])
    row(
        "msgs/s per client",
        lambda x: (
            round(x["delivered"]["msgs_per_s"] / x["delivered"]["connected"], 2)
            if x["delivered"]["connected"]
            else None
        ),
    )
    for q in ("p50_ms", "p90_ms", "p99_ms", "max_ms"):
        row(f"latency {q}", lambda x, q=q: x["delivered"]["latency"][q])
    if scenario.quotes:  # quotes carry the flush time: the stack's share alone
        for q in ("p50_ms", "p99_ms"):
            row(f"flush->client {q}", lambda x, q=q: x["delivered"]["flush_latency"][q])
    else:  # valuations carry valued_at: the pass, the channel layer, daphne and the client
        for q in ("p50_ms", "p99_ms"):
            row(
                f"valued->client {q}",
                lambda x, q=q: x["delivered"].get("valued_latency", {}).get(q),
            )
    row("msgs per server CPU-s", lambda x: x["msgs_per_server_cpu_s"])
    row("msgs per daphne CPU-s", lambda x: x["msgs_per_daphne_cpu_s"])
    row("redis cmds/s (shared)", lambda x: x["redis_cmds_per_s"])
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in rows]
    lines.append("")
    lines.append("process               CPU%  RSS MiB (max)")
    for side in ("livefolio", "floor"):
        if not result.get(side):
            continue
        for name, p in result[side]["procs"].items():
            rss = "-" if p["rss_mib"] is None else f"{p['rss_mib']:>7} ({p['rss_max_mib']})"
            lines.append(f"{name:<20} {p['cpu_pct']:>5}  {rss}")
    ingest = lf.get("ingest")
    if ingest:
        lines.extend(ingest_lines(ingest, lf))
    loss = lf.get("loss")
    if loss:
        what = scenario.loss_subject
        lines.append(
            f"\nfinal-state loss: {loss['stale']} of {loss['checked']} clients' {what} differs "
            f"from the database 1 s after Celery drained (drain {lf['drain_s']} s, backlog "
            f"after drain {lf['backlog_after_drain']})"
        )
        settled = lf.get("loss_settled")
        if settled is not None and settled is not loss and "quiet_after_s" in settled:
            lines.append(
                f"  once deliveries stopped ({settled['quiet_after_s']} s later, bounded by "
                f"--drain): {settled['stale']} of {settled['checked']} still differ"
            )
        if lf["backlog_after_drain"]:
            lines.append("  not drained: undelivered work was still queued (lateness, not loss)")
    if fl and fl.get("subscription_lost"):
        lines.append(
            f"floor: Redis dropped its subscription {fl['subscription_lost']} times (it fell "
            "32 MiB behind): the floor could not carry this load either"
        )
    if lf.get("pinged") is not None:
        lines.append(
            f"idle: {lf['pinged']} of {lf['delivered']['connected']} sockets answered a ping"
            f" after {result['args']['seconds']} s"
        )
    server = "daphne" if result["args"].get("plain_daphne") else "streaming.serve"
    lines.append(
        f"{result['revision']}, {server}, {result['channel_layer']}, "
        f"floor window {result['args']['window_ms']} ms"
    )
    lines.append(
        f"load average at start: {result['loadavg_start']}, at end: {result['loadavg_end']}"
    )
    if result.get("machine_speed"):  # results written before it was measured have none
        during = [
            f"{name} {run['machine_speed']['median_us']} "
            f"({run['machine_speed']['min_us']}-{run['machine_speed']['max_us']})"
            for name, run in (("livefolio", lf), ("floor", result.get("floor")))
            if run and run.get("machine_speed")
        ]
        lines.append(
            f"machine speed, CPU µs per reference step (Decimal and dict work like a "
            f"valuation's; lower is faster): {result['machine_speed']['median_us']} before the "
            f"run; median (min-max) in the window: {', '.join(during) or '-'}"
        )
    return "\n".join(lines)
