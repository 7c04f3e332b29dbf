"""Contracts with the libraries whose private names Livefolio builds on, all of them in one
package (streaming/patches). pyproject.toml pins each library exactly; an upgrade that changes a
function Livefolio copies or overrides, or drops a name it reads, fails here, naming the place to
re-read, instead of failing in production. A private name used in the package and not listed
here fails too, as does a module outside it that reaches into these libraries."""

import hashlib
import importlib
import importlib.metadata
import inspect
import re

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.unit

# Functions Livefolio copies or overrides, by the sha256 (first 16 hex digits) of their source
# at the pinned version, and the place in Livefolio that depends on it.
OVERRIDDEN = {
    "channels.consumer.AsyncConsumer.__call__": (
        "e52238720872dbc3",
        "streaming/patches/dispatch.py consume copies it",
    ),
    "channels.utils.await_many_dispatch": (
        "30ef889498560da3",
        "streaming/patches/dispatch.py Loop replaces it",
    ),
    "channels_redis.pubsub.RedisSingleShardConnection._ensure_redis": (
        "ba228d3cee7116dc",
        "streaming/patches/layers.py _PubSubShard._ensure_redis copies it",
    ),
    "channels_redis.pubsub.RedisSingleShardConnection._do_receiving": (
        "a822736dcb875e43",
        "streaming/patches/layers.py _PubSubShard._do_receiving replaces it",
    ),
    "channels_redis.pubsub.RedisSingleShardConnection._receive_message": (
        "2f5f46af28e8ed76",
        "streaming/patches/layers.py _PubSubShard._receive_message replaces it",
    ),
    "channels_redis.pubsub.RedisSingleShardConnection.subscribe": (
        "173a8f40b17e4e28",
        "streaming/patches/layers.py _PubSubShard.subscribe extends it",
    ),
    "channels_redis.pubsub.RedisPubSubLoopLayer.__init__": (
        "fd9d37e275298a58",
        "streaming/patches/layers.py _PubSubLoopLayer replaces its _shards",
    ),
    "channels_redis.pubsub.RedisPubSubLoopLayer._subscribe_to_channel": (
        "3da2e955db06450f",
        "streaming/patches/layers.py _PubSubLoopLayer._subscribe_to_channel replaces it",
    ),
    "channels_redis.pubsub.RedisPubSubLoopLayer.receive": (
        "2d3fa7938ba6e0a6",
        "streaming/patches/layers.py _PubSubLoopLayer.receive replaces it",
    ),
    "channels_redis.pubsub.RedisPubSubChannelLayer._get_layer": (
        "1862b87a25ac72b2",
        "streaming/patches/layers.py PubSubChannelLayer._get_layer replaces it",
    ),
    "daphne.server.Server.run": (
        "447c6bd42c62e98c",
        "streaming/patches/websocket.py Server.ws_factory catches the factory run() builds inline",
    ),
    "daphne.server.Server.handle_reply": (
        "9d9dbaea6de0657a",
        "streaming/patches/dispatch.py text_sender copies its websocket.send path",
    ),
    "daphne.ws_protocol.WebSocketProtocol.handle_reply": (
        "5331423b1cf2016a",
        "streaming/patches/dispatch.py text_sender copies its websocket.send path",
    ),
    "daphne.ws_protocol.WebSocketProtocol.serverSend": (
        "345f21330d2a18ce",
        "streaming/patches/websocket.py WebSocketProtocol.serverSend drops a frame past the budget",
    ),
    "autobahn.websocket.protocol.WebSocketProtocol._fail_connection": (
        "00c349e066d658bf",
        "streaming/patches/websocket.py WebSocketProtocol._fail_connection replaces it",
    ),
    "autobahn.websocket.protocol.WebSocketProtocol.sendMessage": (
        "048d6bcf0d712309",
        "streaming/patches/websocket.py send_text_frame copies its one-frame path",
    ),
    "autobahn.websocket.protocol.WebSocketProtocol.sendFrame": (
        "89cc8b024c413aa0",
        "streaming/patches/websocket.py send_text_frame copies its one-frame path",
    ),
    "autobahn.websocket.protocol.WebSocketProtocol.sendData": (
        "5dcca425b048b07e",
        "streaming/patches/websocket.py WebSocketProtocol.sendData sends past it",
    ),
}

# Private names Livefolio reads or writes on library objects: (module, class, [names]).
READ = [
    (
        "channels_redis.pubsub",
        "RedisSingleShardConnection",
        ["_redis", "_pubsub", "_lock", "_subscribed_to", "_receive_message", "channel_layer"],
    ),
    (
        "channels_redis.pubsub",
        "RedisPubSubLoopLayer",
        ["_shards", "_get_shard", "_get_group_channel_name", "channels", "groups"],
    ),
    ("channels_redis.pubsub", "RedisPubSubChannelLayer", ["_layers", "_args", "_kwargs"]),
    ("channels_redis.utils", None, ["_wrap_close", "create_pool"]),
    ("channels_redis.core", "RedisChannelLayer", ["create_pool", "hosts", "receive_buffer"]),
    (
        "twisted.internet.abstract",
        "FileDescriptor",
        ["dataBuffer", "offset", "_tempDataBuffer", "_writeDisconnected", "connected"],
    ),
    (
        "twisted.internet.tcp",
        "Server",
        ["TLS", "socket", "producer", "registerProducer", "unregisterProducer"],
    ),
    (
        "autobahn.websocket.protocol",
        "WebSocketProtocol",
        [
            "STATE_OPEN",
            "STATE_CONNECTING",
            "STATE_PROXY_CONNECTING",
            "state",
            "send_queue",
            "trafficStats",
            "sendCloseFrame",
            "dropConnection",
            "failByDrop",
            "failedByMe",
            "wasClean",
            "wasNotCleanReason",
            "_perMessageCompress",
            "trackedTimings",
            "logFrames",
        ],
    ),
    (
        # Options autobahn copies from the factory onto each protocol (CONFIG_ATTRS_SERVER).
        "autobahn.websocket.protocol",
        "WebSocketServerFactory",
        ["autoFragmentSize", "maskServerFrames", "maxMessagePayloadSize"],
    ),
    ("daphne.server", "Server", ["ws_factory", "connections", "handle_reply"]),
]


def source_of(dotted: str) -> str:
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            obj = getattr(obj, name)
        return inspect.getsource(obj)
    raise ImportError(dotted)


@pytest.mark.parametrize("dotted", sorted(OVERRIDDEN))
def test_functions_livefolio_copies_or_overrides_are_unchanged(dotted):
    expected, where = OVERRIDDEN[dotted]
    digest = hashlib.sha256(source_of(dotted).encode()).hexdigest()[:16]
    assert digest == expected, f"{dotted} changed upstream: re-read it for {where}"


def attribute_names(cls: type) -> set[str]:
    """Names a class has or assigns on ``self`` anywhere in its MRO's source."""
    names = set()
    for klass in cls.__mro__:
        names.update(vars(klass))
        try:
            names.update(re.findall(r"self\.(\w+)\s*(?::[^=]+)?=", inspect.getsource(klass)))
        except (OSError, TypeError):
            pass
    return names


@pytest.mark.parametrize(("module", "cls", "names"), READ, ids=[f"{m}.{c}" for m, c, _ in READ])
def test_private_names_livefolio_reads_still_exist(module, cls, names):
    owner = importlib.import_module(module)
    present = attribute_names(getattr(owner, cls)) if cls else set(vars(owner))
    missing = [name for name in names if name not in present]
    assert not missing, f"{module}.{cls or ''} no longer has {missing}"


def test_the_patched_libraries_are_pinned_exactly_at_the_installed_versions():
    pyproject = (ROOT / "pyproject.toml").read_text()
    for package in ("channels", "channels-redis", "daphne", "twisted", "autobahn"):
        pinned = re.search(rf'"{package}=={{1,2}}([^"]+)"', pyproject, re.IGNORECASE)
        assert pinned, f"pyproject.toml must pin {package} exactly"
        assert importlib.metadata.version(package) == pinned.group(1), package


# Private names the patches define themselves (on their own classes), not the libraries'.
OWN = {
    "_error", "_getters", "_items", "_wake_next",  # Inbox
    "_lost", "_new_pubsub", "_reconnected", "_start_over",  # _PubSubShard
    "_within_budget", "_ws_factory",  # WebSocketProtocol, Server
}  # fmt: skip
PATCHES = ROOT / "streaming" / "patches"


def test_every_private_name_the_patches_use_is_under_contract():
    listed = {dotted.rsplit(".", 1)[1] for dotted in OVERRIDDEN}
    listed.update(name for _, _, names in READ for name in names)
    for module in sorted(PATCHES.glob("*.py")):
        source = module.read_text()
        used = set(re.findall(r"\.(_[A-Za-z]\w*)", source))  # attributes and methods
        used.update(re.findall(r"^\s+def (_[A-Za-z]\w*)", source, re.MULTILINE))  # overrides
        used.update(re.findall(r"^from \S+ import .*\b(_[A-Za-z]\w*)", source, re.MULTILINE))
        unlisted = sorted(name for name in used - OWN - listed if not name.startswith("__"))
        assert not unlisted, f"{module.name} uses {unlisted}: list them above (or in OWN)"


def test_only_the_patches_reach_into_the_pinned_libraries():
    internals = re.compile(r"^\s*(?:from|import) (channels_redis|daphne|twisted|autobahn|kombu)\b")
    allowed = {
        "streaming/serve.py": {"daphne"},  # the launcher: daphne's CLI with our server class
        "streaming/consumers.py": {"autobahn"},  # autobahn.exception.Disconnected, public
    }
    reaching = []
    for package in ("portfolio", "streaming"):
        for module in sorted((ROOT / package).rglob("*.py")):
            relative = module.relative_to(ROOT).as_posix()
            if relative.startswith("streaming/patches/"):
                continue
            for line in module.read_text().splitlines():
                found = internals.match(line)
                if found and found.group(1) not in allowed.get(relative, set()):
                    reaching.append(f"{relative}: {line.strip()}")
    assert not reaching, reaching
