"""Every trade, fast: bots on ``trades:<symbol>`` (no ``max_rate``), an exchange at R trades/s.

    python bench/trades_bench.py --clients 100 --rate 100 --seconds 30 [--daphne N] [--no-floor]

One run, on this machine:

1. creates and migrates the bench database, seeds one instrument (BTC-USDT on the ``binance``
   feed) and one user with an API token (``LIVEFOLIO_API_MAX_CONNECTIONS`` raised to the client
   count);
2. starts a local fake Binance (the ``exchange`` mode of this file, a child process speaking
   Binance's combined-stream ``<symbol>@trade`` events), ``manage.py runfeed binance`` against it
   (trades only) and N daphne (``python -m streaming.serve``, as the Procfile does);
3. opens C API connections from client processes (the ``clients`` mode), spread over the daphne,
   each subscribed to ``trades:BTC-USDT``; then the exchange sends R trades a second for T
   seconds, trade ids 1, 2, 3, ... each stamped (``T``) with its send time in ms;
4. measures exchange frame -> bot latency (receive time minus ``T``, so up to 1 ms high), the
   trades each client got (nothing lost: every client's trade ids continuous from its first to
   the exchange's last), and the CPU of daphne, the feed process and Redis;
5. the floor, beside it in the same run (``--no-floor`` skips it): ``bench/floor.py server``, a
   raw websockets server fed by one Redis pub/sub subscription, with the same clients, and the
   same exchange process publishing each trade's update frame straight to Redis.

Needs DATABASE_URL (a database whose name contains "bench": it is created and migrated),
REDIS_URL and LIVEFOLIO_REDIS_PREFIX (containing "bench"). JSON goes to bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the bench package and the project, run as a script
SYMBOL = "BTC-USDT"
FEED_SYMBOL = "BTCUSDT"
DAPHNE = [sys.executable, "-m", "streaming.serve", "-b", "127.0.0.1"]
FLOOR = [sys.executable, str(ROOT / "bench" / "floor.py"), "server"]


# ---------------------------------------------------------------- the exchange (child)


async def exchange_main(args: argparse.Namespace) -> None:
    """A fake Binance: answers SUBSCRIBE, then on ``go`` sends ``rate`` trades/s for
    ``seconds``; in floor mode publishes each trade's API update frame to the floor's channel
    instead. Prints ``url <url>``, then ``sent <n>`` at the end."""
    import orjson
    import redis.asyncio as aioredis

    from tests.feeds.fakes import FakeBinance

    channel = os.environ["LIVEFOLIO_REDIS_PREFIX"] + ".floor"
    floor = aioredis.Redis.from_url(os.environ["REDIS_URL"]) if args.floor else None
    loop = asyncio.get_running_loop()
    go = asyncio.Event()
    loop.add_reader(sys.stdin.fileno(), lambda: sys.stdin.readline() and go.set())
    async with FakeBinance() as exchange:
        print(f"url {exchange.url}", flush=True)
        await go.wait()
        started = time.monotonic()
        sent = 0
        while time.monotonic() - started < args.ex_seconds:
            owed = int((time.monotonic() - started) * args.ex_rate) + 1 - sent
            for _ in range(max(owed, 0)):
                sent += 1
                now = time.time()
                ms = int(now * 1000)
                if floor is not None:
                    trade = {
                        "type": "trade",
                        "instrument": 1,
                        "symbol": SYMBOL,
                        "price": "97000.5",
                        "size": "0.5",
                        "side": "buy",
                        "trade_id": str(sent),
                        "as_of": _iso_ms(ms),
                    }
                    frame = {
                        "type": "update",
                        "seq": sent,
                        "ts": _iso_ms(ms),
                        "stream": f"trades:{SYMBOL}",
                        "stream_seq": sent,
                        "data": trade,
                    }
                    await floor.publish(channel, b"trades " + orjson.dumps(frame))
                else:
                    data = {
                        "e": "trade",
                        "E": ms,
                        "s": FEED_SYMBOL,
                        "t": sent,
                        "p": "97000.5",
                        "q": "0.5",
                        "T": ms,
                        "m": sent % 2 == 0,
                        "M": True,
                    }
                    for client in exchange.clients:
                        if not client.closed.is_set():
                            await exchange.push(
                                {"stream": "btcusdt@trade", "data": data}, client=client
                            )
            await asyncio.sleep(max(0.001, sent / args.ex_rate - (time.monotonic() - started)))
        print(f"sent {sent}", flush=True)
        await asyncio.sleep(3600)  # until the runner stops it


def _iso_ms(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ---------------------------------------------------------------- the bots (child)


class Bot(asyncio.Protocol):
    """One bot's WebSocket (RFC 6455) reduced to what this bench needs, on a bare asyncio
    protocol: the handshake, unfragmented server frames, pings answered, one masked request.
    A general client library costs the client processes more CPU per frame than daphne spends
    sending it, and on 2 cores the clients' wait for a core would be measured as latency."""

    def __init__(self, request: bytes, first: bytes | None, on_text) -> None:
        self.request = request
        self.first = first  # the text frame to send once upgraded (the subscription)
        self.on_text = on_text
        self.buffer = bytearray()
        self.upgraded = asyncio.get_running_loop().create_future()
        self.transport: Any = None

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def send(self, opcode: int, payload: bytes) -> None:
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        length = len(payload)
        if length < 126:
            header = bytes([0x80 | opcode, 0x80 | length])
        else:
            header = bytes([0x80 | opcode, 0x80 | 126]) + length.to_bytes(2, "big")
        self.transport.write(header + mask + masked)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = bytes(buffer[: buffer.find(b"\r\n")])
            del buffer[: end + 4]
            if b" 101 " not in status:
                self.upgraded.set_exception(ConnectionError(status.decode(errors="replace")))
                return
            self.upgraded.set_result(None)
            if self.first is not None:
                self.send(0x1, self.first)
        while len(buffer) >= 2:
            opcode, length, start = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
            if length == 126:
                if len(buffer) < 4:
                    return
                length, start = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    return
                length, start = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < start + length:
                return
            payload = bytes(buffer[start : start + length])
            del buffer[: start + length]
            if opcode == 0x1:
                self.on_text(payload)
            elif opcode == 0x9:
                self.send(0xA, payload)  # pong
            elif opcode == 0x8:
                self.transport.close()
                return


async def clients_main(args: argparse.Namespace) -> None:
    """Opens the connections of its job, subscribes each, prints ``ready <n>``; on ``stop``
    prints ``result <json>``: per client the trade ids' first, last and count, and the
    latencies (ms) of every trade."""
    import base64

    import orjson

    job = json.loads(Path(args.job).read_text())  # noqa: ASYNC240 (before any connection)
    latencies: list[float] = []
    clients: list[dict[str, Any]] = []
    stamps: dict[str, float] = {}
    last_frame = [time.time()]
    subscribe = None
    if job["token"]:
        request = {"type": "subscribe", "id": 1, "stream": f"trades:{SYMBOL}"}
        subscribe = json.dumps(request).encode()

    def receiver(state: dict[str, Any]):
        def on_text(payload: bytes) -> None:
            received = last_frame[0] = time.time()
            message = orjson.loads(payload)
            if message.get("type") != "update":
                return
            data = message["data"]
            trade_id = int(data["trade_id"])
            as_of = stamps.get(data["as_of"])
            if as_of is None:  # every client sees the same trades: parse each once
                text = data["as_of"].replace("Z", "+00:00")
                as_of = stamps[data["as_of"]] = datetime.fromisoformat(text).timestamp()
            latencies.append((received - as_of) * 1000)
            if state["last"] is not None and trade_id != state["last"] + 1:
                state["breaks"] += 1
            if state["first"] is None:
                state["first"] = trade_id
            state["last"] = trade_id
            state["count"] += 1

        return on_text

    loop = asyncio.get_running_loop()
    bots = []
    for url in job["urls"]:
        parts = urlsplit(url)
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {parts.netloc}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ]
        if job["token"]:
            lines.append(f"Authorization: Bearer {job['token']}")
        request = ("\r\n".join(lines) + "\r\n\r\n").encode()
        state = {"first": None, "last": None, "count": 0, "breaks": 0}
        clients.append(state)
        _transport, bot = await loop.create_connection(
            lambda r=request, s=state: Bot(r, subscribe, receiver(s)),
            parts.hostname,
            parts.port,
        )
        bots.append(bot)
    try:
        async with asyncio.timeout(60):
            await asyncio.gather(*(bot.upgraded for bot in bots))
    except Exception as exc:
        print(f"failed {exc!r}", flush=True)
        return
    await asyncio.sleep(1)  # the subscriptions' replies and snapshots
    print(f"ready {len(bots)}", flush=True)
    stop = asyncio.Event()

    def command() -> None:
        line = sys.stdin.readline().strip()
        if line == "quiet":  # seconds since any bot last got a frame
            print(f"quiet {time.time() - last_frame[0]:.2f}", flush=True)
        elif line:
            stop.set()

    loop.add_reader(sys.stdin.fileno(), command)
    await stop.wait()
    print("result " + json.dumps({"clients": clients, "latencies": latencies}), flush=True)
    for bot in bots:
        bot.transport.close()


# ---------------------------------------------------------------- the runner


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    ex = sub.add_parser("exchange")
    ex.add_argument("--trades-per-s", type=float, required=True, dest="ex_rate")
    ex.add_argument("--for-seconds", type=float, required=True, dest="ex_seconds")
    ex.add_argument("--floor", action="store_true")
    cl = sub.add_parser("clients")
    cl.add_argument("job")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rate", type=float, default=100.0, help="trades a second")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--daphne", type=int, default=1)
    parser.add_argument("--client-procs", type=int, default=2)
    parser.add_argument("--no-floor", action="store_true")
    args = parser.parse_args()
    if args.mode == "exchange":
        asyncio.run(exchange_main(args))
    elif args.mode == "clients":
        asyncio.run(clients_main(args))
    else:
        runner(args)


def runner(args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    import psutil

    from bench import processes, world

    missing = [
        n for n in ("DATABASE_URL", "REDIS_URL", "LIVEFOLIO_REDIS_PREFIX") if not os.environ.get(n)
    ]
    if missing:
        sys.exit(f"bench: set {', '.join(missing)}")
    if "bench" not in urlsplit(os.environ["DATABASE_URL"]).path:
        sys.exit("bench: DATABASE_URL must name a *bench* database (it is migrated and seeded)")
    if "bench" not in os.environ["LIVEFOLIO_REDIS_PREFIX"]:
        sys.exit("bench: LIVEFOLIO_REDIS_PREFIX must contain 'bench'")
    env = dict(os.environ)
    env.setdefault("DJANGO_SECRET_KEY", "bench-only-secret-key-0123456789abcdefghijklmnopqrstuv")
    env.update(
        DJANGO_SETTINGS_MODULE="portfolio.settings",
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
        LIVEFOLIO_API_MAX_CONNECTIONS=str(args.clients + 10),
        LIVEFOLIO_WS_MAX_PER_USER=str(args.clients + 10),
    )
    os.environ.update(env)
    world.create_database()
    world.setup_django(env)
    from django.contrib.auth import get_user_model

    from portfolio.models import AssetClass, Instrument
    from streaming import tokens

    Instrument.objects.update_or_create(
        symbol=SYMBOL,
        defaults={
            "name": "Bitcoin / Tether",
            "asset_class": AssetClass.CRYPTO,
            "quote_currency": "USDT",
            "feed": "binance",
            "feed_symbol": FEED_SYMBOL,
            "active": True,
        },
    )
    Instrument.objects.exclude(symbol=SYMBOL).update(active=False)
    user, _ = get_user_model().objects.get_or_create(username="tradebot")
    _row, token = tokens.token_create(user=user, name=f"bench {time.time()}")

    logs = Path(tempfile.mkdtemp(prefix="livefolio-trades-bench-"))
    speed_before = processes.speed_summary([processes.speed_probe() for _ in range(25)])
    result: dict[str, Any] = {
        "args": {k: v for k, v in vars(args).items() if k != "mode"},
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "revision": processes.git_revision(),
        "machine_speed_before": speed_before,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
        "logs": str(logs),
    }
    redis_proc = _redis_process(psutil)
    result["livefolio"] = measure_livefolio(args, env, logs, token, redis_proc)
    if not args.no_floor:
        result["floor"] = measure_floor(args, env, logs, redis_proc)
    result["machine_speed_after"] = processes.speed_summary(
        [processes.speed_probe() for _ in range(25)]
    )
    result["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    out = out_dir / f"{stamp}-trades-c{args.clients}-d{args.daphne}.json"
    out.write_text(json.dumps(result, indent=2))
    print(summary(result))
    print(f"result: {out}\nlogs: {logs}")


def _redis_process(psutil) -> Any:
    for proc in psutil.process_iter(["name"]):
        if proc.info["name"] and proc.info["name"].startswith("redis-server"):
            return proc
    return None


def _cpu(proc) -> float:
    try:
        times = proc.cpu_times()
        return times.user + times.system
    except Exception:
        return 0.0


def start_clients(args, env, logs, urls: list[str], token: str | None, tag: str):
    from bench import processes

    procs = []
    per = -(-len(urls) // args.client_procs)
    for i in range(args.client_procs):
        mine = urls[i * per : (i + 1) * per]
        if not mine:
            continue
        job = logs / f"{tag}-clients-{i}.json"
        job.write_text(json.dumps({"urls": mine, "token": token}))
        procs.append(
            processes.Proc(
                f"{tag}-clients-{i}",
                [sys.executable, __file__, "clients", str(job)],
                env,
                logs,
                stdin=-1,
                stdout=-1,
                text=True,
            )
        )
    for proc in procs:
        line = proc.popen.stdout.readline()
        if not line.startswith("ready"):
            sys.exit(f"bench: {proc.name}: {line}{proc.log_path.read_text()[-2000:]}")
    return procs


def wait_quiet(clients, quiet: float = 2.0, limit: float = 60.0) -> float:
    """Wait until no bot has had a frame for ``quiet`` s (at most ``limit`` s); returns how
    long the deliveries went on after the exchange's last trade."""
    started = time.monotonic()
    while time.monotonic() - started < limit:
        time.sleep(0.5)
        since = []
        for proc in clients:
            proc.popen.stdin.write("quiet\n")
            proc.popen.stdin.flush()
            since.append(float(proc.popen.stdout.readline().split()[1]))
        if min(since) >= quiet:
            break
    return round(max(0.0, time.monotonic() - started - min(since)), 1)


def run_exchange(args, env, logs, tag, *, floor: bool) -> Any:
    from bench import processes

    proc = processes.Proc(
        f"{tag}-exchange",
        [sys.executable, __file__, "exchange", "--trades-per-s", str(args.rate)]
        + ["--for-seconds", str(args.seconds)]
        + (["--floor"] if floor else []),
        env,
        logs,
        stdin=-1,
        stdout=-1,
        text=True,
    )
    line = proc.popen.stdout.readline().split()
    if not line or line[0] != "url":
        sys.exit(f"bench: the exchange did not start: {proc.log_path.read_text()}")
    proc.url = line[1]
    return proc


def measured(exchange, servers, feed, clients, redis_proc) -> dict[str, Any]:
    """Send the trades, then gather: CPU over the sending, what every client got."""
    before = {name: proc.cpu() for name, proc in servers.items()}
    feed_before = feed.cpu() if feed else None
    redis_before = _cpu(redis_proc) if redis_proc else None
    t0 = time.monotonic()
    exchange.popen.stdin.write("go\n")
    exchange.popen.stdin.flush()
    line = exchange.popen.stdout.readline().split()
    wall = time.monotonic() - t0
    sent = int(line[1]) if line and line[0] == "sent" else None
    drain = wait_quiet(clients)  # the trades still in flight, however late
    # CPU over the sending and the drain: everything the deliveries cost.
    cpu = {name: round(proc.cpu() - before[name], 2) for name, proc in servers.items()}
    feed_cpu = round(feed.cpu() - feed_before, 2) if feed else None
    redis_cpu = round(_cpu(redis_proc) - redis_before, 2) if redis_proc else None
    got_clients, latencies = [], []
    for proc in clients:
        proc.popen.stdin.write("stop\n")
        proc.popen.stdin.flush()
        while True:
            line = proc.popen.stdout.readline()
            if not line or line.startswith("result "):
                break
        if line:
            data = json.loads(line[len("result ") :])
            got_clients += data["clients"]
            latencies += data["latencies"]
    lost = 0
    complete = 0
    for state in got_clients:
        if state["first"] is None:
            lost += sent or 0
            continue
        expected = (sent or 0) - state["first"] + 1
        lost += expected - state["count"]
        complete += state["count"] == expected and state["breaks"] == 0
    delivered = sum(s["count"] for s in got_clients)
    server_cpu = sum(cpu.values())
    return {
        "sent": sent,
        "wall_s": round(wall, 2),
        "drain_s": drain,
        "clients": len(got_clients),
        "clients_complete": complete,
        "lost": lost,
        "breaks": sum(s["breaks"] for s in got_clients),
        "delivered": delivered,
        "deliveries_per_s": round(delivered / (wall + drain), 1),
        "latency_ms": {
            "p50": percentile(latencies, 0.50),
            "p90": percentile(latencies, 0.90),
            "p99": percentile(latencies, 0.99),
            "max": percentile(latencies, 1.0),
        },
        "server_cpu_s": cpu,
        "feed_cpu_s": feed_cpu,
        "redis_cpu_s": redis_cpu,
        "deliveries_per_server_cpu_s": round(delivered / server_cpu, 1) if server_cpu else None,
    }


def measure_livefolio(args, env, logs, token, redis_proc) -> dict[str, Any]:
    from bench import processes

    exchange = run_exchange(args, env, logs, "livefolio", floor=False)
    servers, feed, clients = {}, None, []
    try:
        ports = []
        for i in range(args.daphne):
            port = processes.free_port()
            server = processes.Proc(
                f"daphne-{i}",
                [*DAPHNE, "-p", str(port), "portfolio.asgi:application"],
                env,
                logs,
            )
            servers[f"daphne-{i}"] = server
            ports.append(port)
        for server in servers.values():
            server.wait_for("Listening on TCP address")
        feed_env = dict(env, BINANCE_WS_URL=exchange.url, BINANCE_CHANNELS="trade")
        feed = processes.Proc(
            "runfeed", [sys.executable, "manage.py", "runfeed", "binance"], feed_env, logs
        )
        feed.wait_for("feed binance: started")
        time.sleep(2)  # connected and subscribed
        urls = [f"ws://127.0.0.1:{ports[i % len(ports)]}/ws/v1/" for i in range(args.clients)]
        clients = start_clients(args, env, logs, urls, token, "livefolio")
        return measured(exchange, servers, feed, clients, redis_proc)
    finally:
        for proc in [*clients, exchange, feed, *servers.values()]:
            if proc is not None:
                proc.stop()


def measure_floor(args, env, logs, redis_proc) -> dict[str, Any]:
    from bench import processes

    exchange = run_exchange(args, env, logs, "floor", floor=True)
    port = processes.free_port()
    server = processes.Proc(
        "floor-server",
        [*FLOOR, "--port", str(port), "--redis", os.environ["REDIS_URL"]],
        env,
        logs,
    )
    clients = []
    try:
        server.wait_for("floor listening")
        urls = [f"ws://127.0.0.1:{port}/?user=bot{i}&group=trades" for i in range(args.clients)]
        clients = start_clients(args, env, logs, urls, None, "floor")
        return measured(exchange, {"floor": server}, None, clients, redis_proc)
    finally:
        for proc in [*clients, exchange, server]:
            proc.stop()


def summary(result: dict[str, Any]) -> str:
    lines = []
    for name in ("livefolio", "floor"):
        run = result.get(name)
        if not run:
            continue
        lat = run["latency_ms"]
        lines.append(
            f"{name}: sent {run['sent']} trades in {run['wall_s']} s to {run['clients']} clients; "
            f"delivered {run['delivered']} ({run['deliveries_per_s']}/s, the last "
            f"{run['drain_s']} s after the exchange's), lost {run['lost']}, "
            f"clients with every trade {run['clients_complete']}/{run['clients']}; "
            f"exchange -> bot p50 {lat['p50']} p90 {lat['p90']} p99 {lat['p99']} max "
            f"{lat['max']} ms; server CPU-s {run['server_cpu_s']}, feed {run['feed_cpu_s']}, "
            f"redis {run['redis_cpu_s']}; deliveries per server CPU-s "
            f"{run['deliveries_per_server_cpu_s']}"
        )
    before, after = result["machine_speed_before"], result["machine_speed_after"]
    lines.append(
        f"machine speed (µs/step, lower is faster): {before['median_us']} before, "
        f"{after['median_us']} after; load {result['loadavg_start']} -> {result['loadavg_end']}"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
