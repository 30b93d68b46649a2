#!/usr/bin/env python3
"""Writes the hand-made seed corpus of every fuzz target into fuzz/corpus/<target>/.

Run once when a target or an input layout changes (`python3 fuzz/seeds.py`); the
fuzzers grow the corpus from these, and `scripts/fuzz` keeps a minimized copy.
Layouts are those documented in crates/sluice-fuzz/src/*.rs.
"""
import gzip
import hashlib
import os
import re
import struct
import subprocess
import sys

ROOT = os.path.dirname(os.path.abspath(__file__))


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def chunks(*parts):
    out = b""
    for p in parts:
        assert len(p) < 256, len(p)
        out += bytes([len(p)]) + p
    return out


def write(target, seeds):
    d = os.path.join(ROOT, "corpus", target)
    os.makedirs(d, exist_ok=True)
    for s in seeds:
        name = hashlib.sha1(s).hexdigest()
        with open(os.path.join(d, name), "wb") as f:
            f.write(s)


# --- JSON -----------------------------------------------------------------
JSON = [
    b'{}', b'[]', b'{"a":1}', b' {"a": [1, 2.5e-3, -0, true, false, null]}\n',
    b'{"s":"\\u00e9\\ud83d\\ude00\\n\\t\\"\\\\\\/"}', '{"é":"ü€𝄞"}'.encode(),
    b'{"a":{"b":{"c":[{"d":"e"}]}}}', b'"x"', b'123', b'-1.0E+10', b'true',
    b'{"a":1,}', b'[1,]', b'{"a"}', b'01', b'1.', b'"\x01"', b'"\\x"', b'{"a":1} x',
    b'"\\ud800"', b'\xff', b'"\xc3"', b'[' * 127 + b']' * 127, b'[' * 128 + b']' * 128,
    b'[' * 129 + b']' * 129, b'[' * 128 + b'1' + b']' * 128, b'{"a":' * 127 + b'1' + b'}' * 127,
]
write("json", JSON)

# --- NDJSON and JSON bodies ---------------------------------------------------
write("ndjson", [
    b'{"a":1}\n{"b":2}\n', b'{"a":1}\r\n\n  {"b":"x"}\n{"c":3}', b'\n\n', b'{"a":1}\n[1]\n',
    b'{"a":1}\n{oops}\n', '{"é":"ü"}\n'.encode(), b'{"a":"\xff"}\n', b'{"a":1}',
    b'{}\n' * 50, b'{"nested":' * 40 + b'1' + b'}' * 40 + b'\n',
])
write("json_body", [
    b'{"a":1}', b'[{"a":1},{"b":2}]', b' [ {"a":1} , {"b" : "x"} ] ', b'[]', b'[{"a":1},3]',
    b'{} {}', b'42', b'', b'  \n', b'[{"a":[{"b":{}}]}]', b'[' + b','.join([b'{}'] * 30) + b']',
])


# --- queue record -------------------------------------------------------------
def s(b):
    return struct.pack("<I", len(b)) + b


def event(id_, stream, key, recv, ts, headers, payload):
    out = s(id_) + s(stream)
    out += (b"\x01" + s(key)) if key is not None else b"\x00"
    out += struct.pack("<qq", recv, ts) + struct.pack("<I", len(headers))
    for k, v in headers:
        out += s(k) + s(v)
    return out + s(payload)


def record(events):
    return b"\x01" + struct.pack("<I", len(events)) + b"".join(events)


e1 = event(b"01J0000000000000000000000", b"clicks", None, 1700000000000000000, 0, [], b'{"a":1}')
e2 = event(b"id-2", b"clicks", b"user-7", 1, -5, [(b"trace", b"abc"), (b"x", b"")], b'{}')
e3 = event(b"id-3", b"web.eu", None, 0, 0, [], b'')
write("record", [
    record([]), record([e1]), record([e1, e2, e3]), record([e1])[:-3], record([e1]) + b"\x00",
    b"\x02" + record([e1])[1:], record([event(b"\xff", b"s", None, 0, 0, [], b"")]),
])

# --- broker message -------------------------------------------------------------
def broker(payload, headers):
    return chunks(payload, *[x for kv in headers for x in kv])


write("broker", [
    broker(b'{"a":1}', [(b"sluice-id", b"id-1"), (b"sluice-stream", b"clicks"),
                        (b"sluice-received-at", b"1700000000000000000")]),
    broker(b'{}', [(b"sluice-id", b"i"), (b"sluice-stream", b"s"), (b"sluice-received-at", b"1"),
                   (b"sluice-timestamp", b"-7"), (b"sluice-key", b"k"), (b"trace", b"abc"),
                   (b"Nats-Msg-Id", b"i")]),
    broker(b'', [(b"sluice-id", b"x")]),
    broker(b'', [(b"sluice-received-at", b"soon"), (b"sluice-id", b"x"), (b"sluice-stream", b"s")]),
    broker(b'1', [(b"sluice-stream", b"../../x"), (b"sluice-id", b"\xff"), (b"sluice-received-at", b"0")]),
])


# --- gRPC IngestRequest ----------------------------------------------------------
def varint(n):
    out = b""
    n &= (1 << 64) - 1
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n])


def ld(field, b):
    return varint(field << 3 | 2) + varint(len(b)) + b


def pb_event(id_=b"", stream=b"", key=b"", ts=0, headers=(), payload=b""):
    out = b""
    if id_: out += ld(1, id_)
    if stream: out += ld(2, stream)
    if key: out += ld(3, key)
    if ts: out += varint(4 << 3) + varint(ts)
    for k, v in headers:
        out += ld(5, ld(1, k) + ld(2, v))
    if payload: out += ld(6, payload)
    return out


def request(stream, events, return_ids=False):
    out = ld(1, stream) if stream else b""
    for e in events:
        out += ld(2, e)
    if return_ids:
        out += varint(3 << 3) + b"\x01"
    return out


write("grpc_request", [
    b"", request(b"clicks", [pb_event(payload=b'{"a":1}')]),
    request(b"clicks", [pb_event(b"id-1", b"other", b"k", 1700000000000000000, [(b"h", b"v")], b'{"a":1}'),
                        pb_event(payload=b'[1]'), pb_event(ts=-1, payload=b' {} ')], True),
    request(b"s", [b""] * 40), request(b"s", [pb_event(headers=[(b"sluice-stream", b"../../x"), (b"Nats-Rollup", b"all")])]),
    ld(2, b"\x0a\xff"), b"\x0a\x80\x80\x80\x80\x10",
])


# --- WAL -------------------------------------------------------------------------
def frame(payload):
    ln = struct.pack("<I", len(payload))
    return ln + struct.pack("<I", crc32c(payload, crc32c(ln))) + payload


def header(base):
    h = b"SLUICEWL" + struct.pack("<I", 1) + b"\0" * 4 + struct.pack("<Q", base) + b"\0" * 4
    return h + struct.pack("<I", crc32c(h))


frames = frame(b'{"a":1}') + frame(b'{"b":2}') + frame(b"")
flipped = bytearray(frames)
flipped[10] ^= 0x01
write("wal_segment", [
    b"\x00", b"\x00" + frames, b"\x00" + frames[:-3], b"\x00" + bytes(flipped),
    b"\x00" + frames + b"\0" * 16, b"\x00" + struct.pack("<I", 0xFFFFFFFF) + b"\0" * 12,
    b"\x01" + header(0) + frames, b"\x01" + b"SLUICEWL" + b"\0" * 24 + frames,
    b"\x02" + chunks(b'{"a":1}', b'{"b":2}', b""), b"\x06\x02" + chunks(b"one", b"two") + chunks(b"three"),
    b"\x04\x05" + frames[:20] + frames, b"\x06\x01" + chunks(b"x") + chunks(b"y", b"z"),
])


def ckpt(pos):
    b = b"SLCK" + struct.pack("<Q", pos)
    return b + struct.pack("<I", crc32c(b))


write("wal_checkpoint", [
    b"\x00" + ckpt(0), b"\x00" + ckpt(15), b"\x00" + ckpt(45), b"\x00" + ckpt(1 << 40),
    b"\x00" + ckpt(15)[:-1], b"\x00", b"\x01" + struct.pack("<Q", 30), b"\x03" + struct.pack("<Q", 15) + b"proc-1",
    b"\x03" + struct.pack("<Q", 15) + b"../x",
])

# --- HPACK and HTTP/2 ----------------------------------------------------------------
def hx(s):
    return bytes.fromhex(re.sub(r"\s", "", s))


# RFC 7541 C.3 (plain), C.4 (Huffman) requests and C.5/C.6 responses.
c3 = [hx("828684410f7777772e6578616d706c652e636f6d"), hx("828684be58086e6f2d6361636865"),
      hx("828785bf400a637573746f6d2d6b65790c637573746f6d2d76616c7565")]
c4 = [hx("828684418cf1e3c2e5f23a6ba0ab90f4ff"), hx("828684be5886a8eb10649cbf"),
      hx("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf")]
c6 = [hx("488264025885aec3771a4b6196d07abe941054d444a8200595040b8166e082a62d1bff6e919d29ad171863c78f0b97c8e9ae82ae43d3"),
      hx("4883640effc1c0bf"),
      hx("88c16196d07abe941054d444a8200595040b8166e084a62d1bffc05a839bd9ab77ad94e7821dd7f2e6c7b335dfdfcd5b3960d5af27087f3672c1ab270fb5291f9587316065c003ed4ee5b1063d5007")]
write("hpack", [chunks(*c3), chunks(*c4), chunks(*c6), chunks(b"\x3f\xe1\x1f" + c3[0]),
                chunks(b"\x20", b"\x88"), chunks(b"\x00\x01a\x01b"), chunks(b"\xff\xff\xff\xff\xff")])


def h2(ty, flags, sel, payload=b""):
    return bytes([ty, flags, sel]) + payload


HEADERS, DATA, RST, SETTINGS, PING, GOAWAY, WU, CONT = 1, 0, 3, 4, 6, 7, 8, 9
ok_headers = c6[0]
write("h2_frames", [
    b"",
    chunks(h2(SETTINGS, 1, 0), h2(HEADERS, 5, 1, b"\x88")),
    chunks(h2(HEADERS, 4, 1, ok_headers), h2(DATA, 1, 1, b'{"accepted":1}')),
    chunks(h2(HEADERS, 0, 1, b"\x88"), h2(CONT, 4, 1, b"\x0f\x10\x03abc"), h2(DATA, 9, 1, b"\x02xy\0\0")),
    chunks(h2(GOAWAY, 0, 0, b"\0\0\0\0\0\0\0\0"), h2(HEADERS, 5, 1, b"\x88")),
    chunks(h2(RST, 0, 1, b"\0\0\0\x07")),
    chunks(h2(PING, 0, 0, b"12345678"), h2(WU, 0, 0, b"\x7f\xff\xff\xff"), h2(WU, 0, 1, b"\x7f\xff\xff\xff")),
    chunks(h2(SETTINGS, 0, 0, b"\0\x03\0\0\0\0\0\x04\x7f\xff\xff\xff\0\x05\0\0\x40\0")),
    chunks(h2(0xfe, 0, 0, b"HTTP/1.1 200 OK\r\n\r\n")),
    chunks(h2(0xff, 0, 0, b"\0\0\x08\x07\0\0\0\0\0")),
])

# --- decompression --------------------------------------------------------------------------
body = b'{"event":"click","n":1}\n' * 40
gz = [gzip.compress(body), gzip.compress(b"") + gzip.compress(b'{"a":1}\n'), gzip.compress(b"\0" * 200000, 9),
      gzip.compress(body)[:-8], b"\x1f\x8b\x08\x00" + b"\0" * 8]
write("gzip", gz)


def zst(data, *args):
    return subprocess.run(["zstd", "-q", "-c", *args], input=data, stdout=subprocess.PIPE, check=True).stdout


try:
    zs = [zst(body), zst(b""), zst(b"\0" * 200000, "-19"), zst(body)[:-4], zst(body, "--long=27", "-1"),
          zst(b'{"a":1}\n') + zst(b'{"b":2}\n')]
except (FileNotFoundError, subprocess.CalledProcessError):
    print("zstd not found: writing a hand-made frame only", file=sys.stderr)
    zs = []
# A raw-block frame by hand (magic, FHD single-segment, size 3, last raw block of 3).
zs.append(b"\x28\xb5\x2f\xfd\x20\x03\x19\x00\x00abc")
write("zstd", zs)

# --- config ------------------------------------------------------------------------------
readme = open(os.path.join(ROOT, "..", "README.md"), encoding="utf-8").read()
toml = re.search(r"```toml\n(.*?)```", readme, re.S).group(1).encode()
write("config", [
    toml, b"", b'listen = "127.0.0.1:8080"\n[http]\nmax_body_bytes = "1 KiB"\n',
    b'[queue]\nkind = "nats"\n\0queue.url=nats://127.0.0.1:4222\nhttp.idle_timeout=5s',
    b'[[auth.keys]]\nname = "web"\nsha256 = "' + b"ab" * 32 + b'"\nstreams = ["clicks", "web.*"]\nevents_per_s = 100\n',
    b'[http]\nmax_body_bytes = "10 PiB"\n', b'unknown = 1\n', b'[sink]\nkind = "http://x/\xff"\n',
    b'a = [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]\n', b'\0' + b'a.' * 100 + b'b=1',
])
