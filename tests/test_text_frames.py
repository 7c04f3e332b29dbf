"""streaming/patches/websocket.py ``send_text_frame``: the bytes on the wire are the frame
autobahn's own ``sendMessage`` writes (RFC 6455 5.2: FIN, opcode 1, the 7-bit, 16-bit or 64-bit
length, no mask from a server), with the same traffic counts, at every length boundary; with
compression, fragmenting or a size limit in force it is autobahn's own send that runs."""

import pytest
from autobahn.websocket.protocol import Disconnected, TrafficStats

from streaming.patches.websocket import WebSocketProtocol

pytestmark = pytest.mark.unit


class Factory:
    isServer = True


def protocol(**options) -> tuple[WebSocketProtocol, list[bytes]]:
    """An open server protocol, as autobahn sets it up, whose sent bytes are recorded."""
    proto = WebSocketProtocol.__new__(WebSocketProtocol)
    written: list[bytes] = []
    proto.sendData = lambda data, sync=False, chopsize=None: written.append(data)
    proto.factory = Factory()
    proto.state = proto.STATE_OPEN
    proto.trafficStats = TrafficStats()
    proto._perMessageCompress = None
    proto.autoFragmentSize = 0
    proto.maskServerFrames = False
    proto.trackedTimings = None
    proto.logFrames = False
    proto.maxMessagePayloadSize = 0
    for name, value in options.items():
        setattr(proto, name, value)
    return proto, written


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_a_text_frame_is_the_bytes_autobahn_sends(size):
    payload = ("é" * size).encode()[:size]  # UTF-8, a two-byte character cut at the end is
    payload = payload.decode(errors="ignore").encode()  # dropped: valid text of ~size bytes
    ours, ours_wrote = protocol()
    theirs, theirs_wrote = protocol()
    ours.send_text_frame(payload)
    theirs.sendMessage(payload, False)
    assert ours_wrote == [b"".join(theirs_wrote)]
    assert ours_wrote[0][0] == 0x81  # FIN + text
    assert vars(ours.trafficStats) == vars(theirs.trafficStats)


def test_a_closed_connection_refuses_as_autobahn_does():
    closed, _ = protocol(state=WebSocketProtocol.STATE_CLOSED)
    with pytest.raises(Disconnected):
        closed.send_text_frame(b"{}")


@pytest.mark.parametrize(
    "options", [{"autoFragmentSize": 10}, {"maxMessagePayloadSize": 4}, {"logFrames": True}]
)
def test_any_other_case_is_autobahns_own_send(options):
    """Fragmented into 10-byte frames, refused over the size limit, logged: both the same."""
    outcomes, wrote = [], []
    for ours in (True, False):
        proto, written = protocol(**options)
        proto.log = type("Log", (), {"warn": lambda self, message: None})()
        proto.logTxFrame = lambda *args: None
        try:
            if ours:
                proto.send_text_frame(b'{"type": "update", "n": 1234567890}')
            else:
                proto.sendMessage(b'{"type": "update", "n": 1234567890}', False)
            outcomes.append("sent")
        except Exception as exc:
            outcomes.append(type(exc).__name__)
        wrote.append(written)
    assert outcomes[0] == outcomes[1]
    assert wrote[0] == wrote[1]
    if "autoFragmentSize" in options:
        assert len(wrote[0]) == 4  # 36 bytes in frames of at most 10


@pytest.mark.parametrize(
    ("payload", "header"),
    [
        (b"Hello", b"\x81\x05"),  # "A single-frame unmasked text message"
        (b"x" * 256, b"\x81\x7e\x01\x00"),  # the 256-byte example's 16-bit length
        (b"x" * 65536, b"\x81\x7f\x00\x00\x00\x00\x00\x01\x00\x00"),  # the 64 KiB example's
    ],
)
def test_rfc_6455_examples(payload, header):
    """RFC 6455 section 5.7's examples: "0x81 0x05 0x48 0x65 0x6c 0x6c 0x6f (contains
    "Hello")"; a 256-byte and a 64 KiB message in a single unmasked frame carry "0x7E 0x0100"
    and "0x7F 0x0000000000010000" (the RFC shows those two as binary, 0x82; text is 0x81)."""
    proto, written = protocol()
    proto.send_text_frame(payload)
    assert written == [header + payload]
