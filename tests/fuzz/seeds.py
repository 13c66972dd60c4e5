#!/usr/bin/env python3
"""Writes the seed corpora in tests/fuzz/corpus/<target>/ (run from anywhere; rerun after
editing). Seeds are named seed-<what>; files that libFuzzer found and `make fuzz-merge` kept
are named by their sha1 and are left alone here.

http: byte 0 settings, byte 1 split seed, then a connection's bytes (see http_fuzz.c).
ws:   byte 0 settings (bit 0 inflater, bits 2-5 limits), byte 1 split seed, then client frames (ws_fuzz.c).
proto, policy: one client text frame.
proxy: byte 0 split seed, then a connection's first bytes: a PROXY header and what follows (proxy_fuzz.c)."""
import json
import os
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MASK = b"\x37\xfa\x21\x3d"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def frame(op, payload=b"", fin=True, rsv1=False, mask=MASK, length=None):
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | op
    if n < 126:
        h = bytes([b0, 0x80 | n])
    elif n <= 0xFFFF:
        h = bytes([b0, 0x80 | 126]) + struct.pack(">H", n)
    else:
        h = bytes([b0, 0x80 | 127]) + struct.pack(">Q", n)
    body = bytes(c ^ mask[i & 3] for i, c in enumerate(payload))
    return h + mask + body


def deflate(data, bits=15):
    z = zlib.compressobj(6, zlib.DEFLATED, -bits)
    out = z.compress(data) + z.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def upgrade(path="/ws?room=lobby&name=alice", extra=""):
    return ("GET %s HTTP/1.1\r\nHost: localhost:8888\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
            % (path, KEY, extra)).encode()


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def http_seeds():
    pmd = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    hello = frame(1, b'{"type":"msg","room":"lobby","text":"hi"}')
    seeds = {
        "healthz": (0x00, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"),
        "pipelined": (0x00, b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\nGET /readyz HTTP/1.1\r\nHost: a\r\n\r\n"
                            b"HEAD /metrics HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"),
        "http10": (0x00, b"GET / HTTP/1.0\r\n\r\n"),
        "post-length": (0x00, b"POST /api/rooms/lobby/messages HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\n"
                              b"Content-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"text\":\"hey\"}\n"),
        "post-chunked": (0x02, b"POST /api/x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                               b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"),
        "body-too-big": (0x02, b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999\r\n\r\n"),
        "no-host": (0x00, b"GET /healthz HTTP/1.1\r\n\r\n"),
        "two-hosts": (0x00, b"GET /healthz HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"),
        "http10-te": (0x00, b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n"
                            b"1\r\nx\r\n0\r\n\r\nGET / HTTP/1.0\r\n\r\n"),
        "header-too-big": (0x01, b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 300 + b"\r\n\r\n"),
        "bad-header-name": (0x00, b"GET / HTTP/1.1\r\nBad Name: v\r\n\r\n"),
        "bad-space-colon": (0x00, b"GET / HTTP/1.1\r\nHost : v\r\n\r\n"),
        "h2-preface": (0x00, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
        "http09": (0x00, b"GET /\r\n"),
        "absolute": (0x00, b"GET http://example.com:8888/ws%2Fx?room=a%20b&name=%E2%98%83+x HTTP/1.1\r\nHost: a\r\n\r\n"),
        "pct-bad": (0x00, b"GET /a%zz?room=%00 HTTP/1.1\r\nHost: a\r\n\r\n"),
        "ws": (0x00, upgrade() + hello + frame(9, b"ping") + frame(8, b"\x03\xe8bye")),
        "ws-deflate": (0x10, upgrade(extra=pmd) + frame(1, deflate(b'{"type":"msg","room":"lobby","text":"hello hello hello"}'), rsv1=True)
                             + frame(1, deflate(b"x" * 2000), rsv1=True)),
        "ws-deflate-nct": (0x10, upgrade(extra="Sec-WebSocket-Extensions: x-webkit, permessage-deflate; "
                                               "client_no_context_takeover; server_max_window_bits=10; client_max_window_bits=9\r\n")
                                 + frame(1, deflate(b"abcabcabc", 9), rsv1=True)),
        "ws-deflate-quoted": (0x10, upgrade(extra='Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits="12"\r\n'
                                                 "Sec-WebSocket-Extensions: permessage-deflate\r\n")),
        "ws-room-path": (0x00, upgrade("/lobby?name=bob", "Sec-WebSocket-Protocol: chat, chatgw.v1\r\n") + hello),
        "ws-origin-ok": (0x08, upgrade(extra="Origin: https://chat.example.com\r\n") + hello),
        "ws-origin-same": (0x00, upgrade(extra="Origin: http://localhost:8888\r\n")),
        "ws-origin-bad": (0x00, upgrade(extra="Origin: https://evil.example\r\n")),
        "ws-origin-null": (0x0c, upgrade(extra="Origin: null\r\n")),
        "ws-version": (0x00, upgrade().replace(b"Version: 13", b"Version: 8")),
        "ws-badkey": (0x00, upgrade().replace(KEY.encode(), b"short==")),
        "ws-twokeys": (0x00, upgrade(extra="Sec-WebSocket-Key: %s\r\n" % KEY)),
        "ws-post": (0x00, upgrade().replace(b"GET", b"POST", 1)),
        "ws-http10": (0x00, upgrade().replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
        "ws-conn-list": (0x00, upgrade().replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade")),
        "ws-no-upgrade": (0x00, b"GET /ws HTTP/1.1\r\nHost: a\r\n\r\n"),
        "echo": (0x20, upgrade("/echo") + frame(2, bytes(range(256)))),
    }
    for name, (flags, data) in seeds.items():
        write("http", name, bytes([flags, 0x5a]) + data)


def ws_seeds():
    text = b'{"type":"msg","room":"lobby","text":"hi"}'
    seeds = {
        "text": (0x3c, frame(1, text)),
        "binary": (0x3c, frame(2, bytes(range(256)))),
        "empty": (0x3c, frame(1, b"")),
        "fragments": (0x3c, frame(1, b"hel", fin=False) + frame(9, b"p") + frame(0, b"lo ", fin=False) + frame(0, "wörld".encode())),
        "utf8-split": (0x3c, frame(1, "é€😀".encode()[:3], fin=False) + frame(0, "é€😀".encode()[3:])),
        "utf8-bad": (0x3c, frame(1, b"\xed\xa0\x80")),
        "utf8-overlong": (0x3c, frame(1, b"\xc0\xaf")),
        "close": (0x3c, frame(8, b"\x03\xe8normal")),
        "close-empty": (0x3c, frame(8)),
        "close-bad-code": (0x3c, frame(8, b"\x03\xed")),
        "close-one-byte": (0x3c, frame(8, b"\x03")),
        "close-bad-utf8": (0x3c, frame(8, b"\x0f\xa0\xff")),
        "ping-pong": (0x3c, frame(9, b"x" * 125) + frame(10, b"")),
        "ping-long": (0x3c, frame(9, b"x" * 126)),
        "ping-fragmented": (0x3c, frame(9, b"x", fin=False)),
        "unmasked": (0x3c, b"\x81\x02hi"),
        "rsv": (0x3c, frame(1, b"x")[:1].replace(b"\x81", b"\xa1") + frame(1, b"x")[1:]),
        "opcode-3": (0x3c, frame(3, b"x")),
        "opcode-b": (0x3c, frame(11, b"")),
        "cont-first": (0x3c, frame(0, b"x")),
        "text-in-text": (0x3c, frame(1, b"a", fin=False) + frame(1, b"b")),
        "len16": (0x3c, frame(2, b"z" * 300)),
        "len64": (0x3c, frame(2, b"z" * 70000)),
        "len64-huge": (0x3c, frame(2, b"", length=1 << 40)[:14]),
        "len64-top-bit": (0x3c, bytes([0x82, 0xff]) + b"\x80" + b"\x00" * 7 + MASK),
        "frame-limit": (0x00, frame(2, b"y" * 200)),
        "message-limit": (0x14, frame(2, b"y" * 600, fin=False) + frame(0, b"y" * 600)),
        "deflate": (0x3d, frame(1, deflate(b"hello hello hello hello"), rsv1=True)),
        "deflate-fragments": (0x3d, (lambda c: frame(1, c[:4], fin=False, rsv1=True) + frame(0, c[4:]))(deflate(b"abc" * 100))),
        "deflate-context": (0x3d, frame(1, deflate(b"same text"), rsv1=True) + frame(1, deflate(b"same text"), rsv1=True)),
        "deflate-nct": (0x3f, frame(1, deflate(b"one"), rsv1=True) + frame(1, deflate(b"two"), rsv1=True)),
        "deflate-final": (0x3d, frame(2, zlib.compressobj(6, zlib.DEFLATED, -15).compress(b"fin") +
                                       zlib.compressobj(6, zlib.DEFLATED, -15).flush(), rsv1=True)),
        "deflate-bomb": (0x15, frame(2, deflate(b"\0" * 200000), rsv1=True)),
        "deflate-corrupt": (0x3d, frame(1, b"\xff\xff\xff\xff", rsv1=True)),
        "deflate-empty": (0x3d, frame(1, b"", rsv1=True)),
        "deflate-rsv-cont": (0x3d, frame(1, b"a", fin=False) + frame(0, b"b", rsv1=True)),
        "deflate-off": (0x3c, frame(1, deflate(b"x"), rsv1=True)),
        "negotiate": (0x3c, b"permessage-deflate; client_max_window_bits; server_max_window_bits=10, "
                            b"permessage-deflate; client_no_context_takeover"),
        "negotiate-quoted": (0x3c, b'permessage-deflate; client_max_window_bits="8"; server_no_context_takeover'),
    }
    for name, (flags, data) in seeds.items():
        write("ws", name, bytes([flags, 0x33]) + data)


PROTO = [
    ("join", {"type": "join", "room": "lobby", "name": "alice"}),
    ("join-since", {"type": "join", "room": "lobby", "since": "k3x9:42"}),
    ("leave", {"type": "leave", "room": "lobby"}),
    ("msg", {"type": "msg", "room": "lobby", "text": "hello ☃", "cid": 7}),
    ("msg-cid-str", {"type": "msg", "room": "r-1", "text": "x", "cid": "abc"}),
    ("dm", {"type": "dm", "to": "c2", "text": "psst"}),
    ("signal", {"type": "signal", "room": "lobby", "to": "c2", "data": {"sdp": "v=0", "type": "offer", "c": [1, 2.5, None, True]}}),
    ("mute", {"type": "mute", "room": "lobby"}),
    ("unmute", {"type": "unmute", "room": "lobby"}),
    ("history", {"type": "history", "room": "lobby", "since": "e:18446744073709551615"}),
    ("custom", {"type": "typing", "room": "lobby", "on": True}),
    ("custom-rooms", {"type": "rooms"}),
    ("bad-room", {"type": "join", "room": ".hidden/x"}),
    ("bad-name", {"type": "join", "room": "a", "name": "\u0085"}),
    ("bad-since", {"type": "history", "room": "a", "since": "e:18446744073709551616"}),
    ("bad-type", {"type": "Msg"}),
    ("bad-cid", {"type": "msg", "room": "a", "text": "b", "cid": 1.5}),
    ("too-large", {"type": "msg", "room": "a", "text": "x" * 5000}),
    ("empty-text", {"type": "msg", "room": "a", "text": ""}),
]


def proto_seeds():
    for name, msg in PROTO:
        write("proto", name, json.dumps(msg, ensure_ascii=False).encode())
    raw = {
        "array": b"[1,2,3]",
        "scalar": b"42",
        "trailing": b'{"type":"msg"} x',
        "nul-escape": b'{"type":"msg","room":"a","text":"a\\u0000b"}',
        "surrogate": b'{"type":"msg","room":"a","text":"\\ud800"}',
        "deep": b'{"type":"x","d":' + b"[" * 100 + b"]" * 100 + b"}",
        "dup-keys": b'{"type":"msg","type":"join","room":"a"}',
        "bad-utf8": b'{"type":"msg","room":"\xff","text":"a"}',
        "big-int": b'{"type":"msg","room":"a","text":"b","cid":123456789012345678901234567890}',
        "empty": b"",
    }
    for name, data in raw.items():
        write("proto", name, data)


def policy_seeds():
    for name, msg in PROTO[:12]:
        write("policy", name, json.dumps(msg, ensure_ascii=False).encode())
    ops = {
        "echo": {"type": "x.echo", "room": "lobby", "text": "hi", "list": [1, None, {"a": []}]},
        "pass": {"type": "x.pass"},
        "nothing": {"type": "x.nothing"},
        "handled": {"type": "x.handled", "room": "lobby", "deep": {"a": {"b": [1, 2]}}},
        "drop": {"type": "x.drop", "code": "no_spam"},
        "drop-empty": {"type": "x.drop"},
        "refuse": {"type": "x.refuse", "code": "x" * 100},
        "copy": {"type": "x.copy", "v": [1, 2.5, True, None, "s", {}], "o": {"k": {}}},
        "err": {"type": "x.err", "text": "boom"},
        "errtable": {"type": "x.errtable"},
        "number": {"type": "x.number", "n": 3},
        "string": {"type": "x.string", "text": "just a string"},
        "loop": {"type": "x.loop"},
        "membomb": {"type": "x.membomb"},
        "deep": {"type": "x.deep", "n": 250, "text": "leaf"},
        "host": {"type": "x.host", "to": "c1", "room": "lobby", "kick": True, "code": "bye", "level": "info",
                 "text": "log line", "fields": {"k": 1}},
        "host-missing": {"type": "x.host", "to": "nobody", "room": "nowhere", "level": "loud"},
        "store": {"type": "x.store", "key": "k", "value": {"a": [1, 2]}, "ttl": 5, "n": 2},
        "store-del": {"type": "x.store", "key": "k", "value": "v", "del": True},
        "limit": {"type": "x.limit", "key": "c1", "rate": 2, "burst": 3},
        "jwt": {"type": "x.jwt", "token": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhIn0.xxxx", "secret": "s"},
        "strings": {"type": "x.strings", "text": "héllo ☃ wörld", "needle": "☃"},
        "moderate": {"type": "msg", "room": "lobby", "text": "buy SPAM now"},
        "moderate-drop": {"type": "msg", "room": "lobby", "text": "/drop me"},
        "nick": {"type": "msg", "room": "lobby", "text": "/nick bob"},
        "me": {"type": "msg", "room": "lobby", "text": "/me waves"},
    }
    for name, msg in ops.items():
        write("policy", "op-" + name, json.dumps(msg, ensure_ascii=False).encode())
    for k in range(16):
        write("policy", "op-weird-%02d" % k, json.dumps({"type": "x.weird", "n": k, "list": []}).encode())


def proxy_seeds():
    sig = b"\r\n\r\n\x00\r\nQUIT\n"
    def v2(ver_cmd, fam, block):
        return sig + bytes([ver_cmd, fam]) + struct.pack(">H", len(block)) + block
    v4 = bytes([203, 0, 113, 7, 10, 0, 0, 1]) + struct.pack(">HH", 56324, 443)
    v6 = bytes.fromhex("20010db8000000000000000000000042") + bytes(15) + b"\x01" + struct.pack(">HH", 1, 2)
    seeds = {
        "v1-tcp4": b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n\r\n",
        "v1-tcp6": b"PROXY TCP6 2001:db8::7 2001:db8::1 1 65535\r\n\x16\x03\x01",
        "v1-unknown": b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n",
        "v1-long": b"PROXY UNKNOWN " + b"a" * 120 + b"\r\n",
        "v1-lf": b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        "v2-tcp4": v2(0x21, 0x11, v4) + b"GET /",
        "v2-tcp6-tlv": v2(0x21, 0x21, v6 + b"\x04\x00\x03abc\x20\x00\x05\x01\x00\x00\x00\x00"),
        "v2-local": v2(0x20, 0x00, b""),
        "v2-unix": v2(0x21, 0x31, b"/" + bytes(215)),
        "v2-short": v2(0x21, 0x21, v6[:20]),
        "v2-udp": v2(0x21, 0x12, v4),
        "no-header": b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for i, (name, data) in enumerate(seeds.items()):
        write("proxy", name, bytes([0x11 + 2 * i]) + data)


if __name__ == "__main__":
    http_seeds()
    ws_seeds()
    proto_seeds()
    policy_seeds()
    proxy_seeds()
