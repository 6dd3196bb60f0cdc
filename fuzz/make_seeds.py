#!/usr/bin/env python3
"""Writes the hand-made seed corpora in fuzz/corpus/. The byte layouts mirror the decoders in
core/src/fuzzing.rs (`ops_config`, `op`, `config`); rerun after changing them."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


# ----- frame_decode: the whole input is the frame; a first byte >= 0x80 picks a small limit.
ID = "0b5f4a3c-8e2d-4f1a-9c3b-2d1e0f9a8b7c"
frames = {
    "reply": '{"type":"success","payload":{"allocationId":"a1"},"replyTo":"0b5f4a3c-8e2d-4f1a-9c3b-2d1e0f9a8b7c"}',
    "denial": '{"type":"error","error":"limit reached","message":"no","replyTo":"0b5f4a3c-8e2d-4f1a-9c3b-2d1e0f9a8b7c"}',
    "id_only": '{"type":"success","replyTo":"","id":"abc","extra":[1,2,{"x":null}]}',
    "push": '{"type":"policies_updated","payload":{"policies":[],"total":0}}',
    "not_object": "[1,2,3]",
    "missing_type": '{"payload":1}',
    # Liberal decoding: a field of an unexpected type never makes the frame unreadable, and a
    # duplicated key keeps its last occurrence.
    "reply_to_number": '{"type":"x","replyTo":5}',
    "reply_to_number_id_string": '{"type":"success","replyTo":7,"id":"' + ID + '"}',
    "reply_to_null": '{"type":"success","replyTo":null,"id":"' + ID + '"}',
    "reply_to_bool": '{"type":"success","replyTo":true,"id":"' + ID + '"}',
    "reply_to_object": '{"type":"success","replyTo":{"id":"' + ID + '"},"id":"' + ID + '"}',
    "reply_to_array": '{"type":"success","replyTo":["' + ID + '"],"id":"' + ID + '"}',
    "reply_to_huge_number": '{"type":"success","replyTo":1e400,"id":"' + ID + '"}',
    "reply_to_lone_surrogate": '{"type":"success","replyTo":"\\ud800","id":"' + ID + '"}',
    "id_number": '{"type":"success","replyTo":"' + ID + '","id":42}',
    "id_object": '{"type":"success","replyTo":"' + ID + '","id":{"a":[1,{"b":null}]}}',
    "id_and_reply_to_numbers": '{"type":"success","replyTo":1,"id":2.5e-3}',
    "error_object": '{"type":"error","replyTo":"' + ID + '","error":{"code":429}}',
    "error_object_spaced": '{"type":"success","replyTo":"' + ID + '","error":{ "code" : 429,\n "why": "a b" }}',
    "error_array": '{"type":"success","replyTo":"' + ID + '","error":["quota",1]}',
    "error_true": '{"type":"success","replyTo":"' + ID + '","error":true}',
    "error_number": '{"type":"success","replyTo":"' + ID + '","error":429}',
    "error_huge_number": '{"type":"success","replyTo":"' + ID + '","error":-1e400}',
    "error_tiny_number": '{"type":"success","replyTo":"' + ID + '","error":1e-400}',
    "error_lone_surrogate": '{"type":"success","replyTo":"' + ID + '","error":"\\udc00"}',
    "error_false": '{"type":"success","replyTo":"' + ID + '","error":false}',
    "error_null": '{"type":"success","replyTo":"' + ID + '","error":null}',
    "error_empty_string": '{"type":"success","replyTo":"' + ID + '","error":""}',
    "error_zero": '{"type":"success","replyTo":"' + ID + '","error":-0.0e5}',
    "error_empty_object": '{"type":"success","replyTo":"' + ID + '","error":{ }}',
    "error_empty_array": '{"type":"success","replyTo":"' + ID + '","error":[]}',
    "message_number": '{"type":"error","replyTo":"' + ID + '","message":404}',
    "message_object": '{"type":"error","replyTo":"' + ID + '","message":{"en":"no", "fr":"non"}}',
    "message_null": '{"type":"error","replyTo":"' + ID + '","message":null}',
    "duplicate_type": '{"type":7,"type":"success","replyTo":"' + ID + '"}',
    "duplicate_type_last_not_string": '{"type":"success","type":7,"replyTo":"' + ID + '"}',
    "duplicate_payload": '{"type":"success","payload":{"a":1},"payload":[2],"replyTo":"' + ID + '"}',
    "duplicate_id": '{"type":"success","id":"first","id":"' + ID + '"}',
    "duplicate_reply_to": '{"type":"success","replyTo":"' + ID + '","replyTo":5,"id":"other"}',
    "duplicate_message": '{"type":"error","message":"first","message":"second","replyTo":"' + ID + '"}',
    "duplicate_error": '{"type":"success","error":"no","error":false,"replyTo":"' + ID + '"}',
    "nested_ignored": '{"extra":{"type":7,"replyTo":{"id":[1,{"error":true}]}},"type":"success","meta":[[{}],[[1e400]],"\\ud800"],"replyTo":"' + ID + '"}',
    "array_with_type": '["success"]',
    "garbage": "{nope",
    "escapes": '{"type":"s\\u00e9\\ud83d\\ude00","message":"\\n\\t\\"","payload":1e308}',
    "deep": "[" * 200 + "]" * 200,
}
for name, text in frames.items():
    write("frame_decode", name, text)
write("frame_decode", "too_large_small_limit", b"\x80" + b'{"type":"success","payload":"' + b"x" * 80 + b'"}')
write("frame_decode", "invalid_utf8", b'{"type":"\xff\xfe"}')

# ----- pool_ops: 6 config bytes + 8 seed bytes, then operations.
FLAG_DRAIN, FLAG_AGE, FLAG_RESEND, FLAG_JITTER, FLAG_SPREAD, FLAG_SMALL_FRAME, FLAG_ZERO_BACKOFF, FLAG_SHORT_TIMEOUT = (
    1 << i for i in range(8)
)


def header(pool=1, in_flight=4, unflushed=8, outbox=2, flags=0, attempts=2, seed=7):
    return bytes([pool - 1, in_flight - 1, unflushed - 1, outbox, flags, attempts - 1]) + struct.pack("<Q", seed)


CONNECT = bytes([0])
CLOSE = bytes([8])


def request(timeout_steps=0, idempotent=0, kind=0):  # timeout: 0 = default, n = (n-1)*20 ms
    return bytes([2, timeout_steps, idempotent, kind])


def send(kind=2):
    return bytes([5, kind])


def cancel(back=0):
    return bytes([7, back])


def advance(ms):
    return bytes([9]) + struct.pack("<H", ms)


def inp(kind, *args, back=0):  # on the back-th most recently dialed connection
    return bytes([11, back, kind]) + bytes(args)


def connected(back=0):
    return inp(0, back=back)


def reply(req_back=0, shape=0, back=0):
    return inp(2, req_back, shape, back=back)


def flushed(back=0):
    return inp(6, 255, back=back)


def closed(back=0):
    return inp(8, 1, back=back)


write("pool_ops", "connect_request_reply",
      header() + CONNECT + connected() + request() + reply() + flushed()
      + request() + reply(shape=1) + request() + reply(shape=3) + advance(5000))
write("pool_ops", "three_slots_lose_and_resend",
      header(pool=3, flags=FLAG_RESEND) + CONNECT + connected(0) + connected(1) + connected(2)
      + request(kind=1) + request(kind=1) + request(kind=0) + closed(0) + advance(600)
      + connected(0) + reply(0) + reply(1) + reply(2) + advance(3000))
write("pool_ops", "outbox_then_connect",
      header(outbox=4) + send(0) + send(1) + send(2) + CONNECT + connected() + flushed()
      + send(2) + inp(6, 1) + advance(6000))
write("pool_ops", "timeouts_and_cancel",
      header(pool=2, flags=FLAG_SHORT_TIMEOUT) + CONNECT + connected(0) + connected(1)
      + request(timeout_steps=3) + request() + request(timeout_steps=1) + cancel(1) + advance(50)
      + reply(2) + advance(400) + reply(0))
write("pool_ops", "rotation",
      header(flags=FLAG_AGE | FLAG_JITTER) + CONNECT + connected() + request() + advance(1000)
      + inp(5) + advance(1500) + connected(0) + reply(0, back=1) + flushed(1) + advance(3000))
write("pool_ops", "close_with_drain",
      header(pool=2, flags=FLAG_DRAIN) + CONNECT + connected(0) + connected(1) + request() + request()
      + send() + CLOSE + reply(0) + advance(500) + request() + send() + advance(1000))
write("pool_ops", "bad_frames",
      header(flags=FLAG_SMALL_FRAME) + CONNECT + connected() + inp(3, 5) + b"{nope"
      + inp(4, 1) + struct.pack("<H", 100) + inp(4, 0) + struct.pack("<H", 9) + reply(shape=7)
      + reply(shape=6) + request() + reply(shape=4) + inp(1, 0) + inp(7))
write("pool_ops", "dial_failures_exhaust",
      header(pool=2, attempts=1, flags=FLAG_ZERO_BACKOFF | FLAG_SPREAD) + CONNECT + advance(1000)
      + inp(1, 0) + inp(1, 2, back=1) + inp(1, 3) + request() + CONNECT + connected() + request() + reply())

# ----- config: url selector, key selector, field mask (u32), field values, seed, dial answers.
def config(mask=0, fields=b"", url=(0, 0), key=0, seed=1, answers=b"\x00" * 8):
    return bytes([url[0], url[1], key]) + struct.pack("<I", mask) + fields + struct.pack("<Q", seed) + answers


write("config", "defaults", config())
write("config", "production_url", config(url=(0, 1)))
write("config", "bad_url", config(url=(0, 4)))
write("config", "pool_of_three", config(mask=1, fields=bytes([3])))
write("config", "zero_pool", config(mask=1, fields=bytes([0])))
# request_timeout = Duration::MAX (selector 5), ping_period = 1h (3).
write("config", "huge_durations", config(mask=0b110, fields=bytes([5, 3])))
# backoff_jitter = NaN.
write("config", "nan_jitter", config(mask=1 << 9, fields=bytes([0])))
# pool 64, close_drain 10 ms, max_connection_age 1 s... (selector bytes per field).
write("config", "drain_and_age", config(mask=1 | 1 << 16 | 1 << 17, fields=bytes([64, 2, 0, 8]) + struct.pack("<H", 1500)))
write("config", "rejected_dials", config(mask=1, fields=bytes([2]), answers=b"\xff\xff\xff\xff\x00\x00"))
