"""The peer wire format: frames, the HELLO greeting, and an incremental bounded decoder.

Core (pure). etcdd members talk only to etcdd members, so this is our own protocol, not
etcd's rafthttp streams; what it carries is etcd's (raftpb `Message`s, the snapshot db).

A frame is a 1-byte kind, a 4-byte big-endian payload length, then the payload::

    02 | 00 00 00 08 | 08 03 10 02 18 01 20 03     MSG: one marshaled raftpb.Message

Every connection starts with HELLO in both directions. A message stream then carries
MSG frames one way; a snapshot stream carries SNAP_HEADER (the MsgSnap), SNAP_CHUNKs of
raw db bytes, SNAP_END (the sha256 of all chunks) one way and ACK or ERROR back. A call
stream carries CALLs one way and a REPLY to each back, in any order, matched by call id::

    08 | 00 00 00 10 | 00..00 07 | 05 | renew | 08 2a        CALL 7, method "renew"
    09 | 00 00 00 0d | 00..00 07 | 00 | 08 2a 10 05           REPLY 7: ok, response bytes
    09 | 00 00 00 .. | 00..00 07 | 05 | etcdserver: ...       REPLY 7: NOT_FOUND, message

ERROR (a utf-8 reason) is always the last frame its sender writes on a connection.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum

from google.protobuf.message import DecodeError

from etcdd.proto import raft_pb2


class FrameKind(IntEnum):
    HELLO = 1
    MSG = 2
    SNAP_HEADER = 3
    SNAP_CHUNK = 4
    SNAP_END = 5
    ACK = 6
    ERROR = 7
    CALL = 8
    REPLY = 9


class StreamKind(IntEnum):
    """What a connection carries after its HELLO."""
    MSG = 1
    SNAP = 2
    CALL = 3


PROTOCOL_VERSION = 1
HEADER = struct.Struct(">BI")
HEADER_BYTES = HEADER.size                  # 5
_HELLO = struct.Struct(">BQQQB")            # version, cluster_id, from_id, to_id, stream
HELLO_BYTES = _HELLO.size                   # 26
SNAP_CHUNK_BYTES = 256 * 1024               # the most raw db bytes one SNAP_CHUNK carries
SHA256_BYTES = 32
MAX_ERROR_BYTES = 1024                      # longer reasons are cut before sending

_CALL_HEAD = struct.Struct(">QB")          # call id, method name length
_REPLY_HEAD = struct.Struct(">QB")         # call id, status
CALL_HEAD_BYTES = _CALL_HEAD.size          # 9
REPLY_HEAD_BYTES = _REPLY_HEAD.size        # 9
MAX_METHOD_BYTES = 255
MAX_CALL_ID = 2**64 - 1
STATUS_OK = 0
MAX_STATUS = 16                            # gRPC codes are 0 (OK) to 16 (UNAUTHENTICATED)

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_pack_call_head = _CALL_HEAD.pack
_unpack_call_head = _CALL_HEAD.unpack_from
_pack_reply_head = _REPLY_HEAD.pack
_unpack_reply_head = _REPLY_HEAD.unpack_from


class PeerFrameError(Exception):
    """Bad input from a peer: answered with ERROR(str(error)), then that connection closes."""


class PeerCallError(Exception):
    """A call to a peer ended without an answer from its handler: unknown or unreachable
    peer, connection lost with the call in flight, transport stopped, timeout, too many
    calls in flight. `reason` says which."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class FrameTooLargeError(PeerFrameError):
    """A header announcing more payload than its kind allows (refused unbuffered)."""

    def __init__(self, kind: FrameKind, length: int, limit: int) -> None:
        super().__init__(f"{kind.name} frame of {length} bytes is over the limit of "
                         f"{limit} bytes")
        self.kind, self.length, self.limit = kind, length, limit


class UnknownFrameKindError(PeerFrameError):
    """A header whose kind byte names no frame kind."""

    def __init__(self, kind: int) -> None:
        super().__init__(f"unknown frame kind {kind}")
        self.kind = kind


class TruncatedFrameError(PeerFrameError):
    """The connection ended inside a frame."""

    def __init__(self, buffered_bytes: int) -> None:
        super().__init__(f"connection ended inside a frame ({buffered_bytes} bytes buffered)")


@dataclass(frozen=True, slots=True)
class Hello:
    """The first frame on every connection, in both directions.

    The connecting side says who it is (`from_id`), whom it means (`to_id`) and what the
    stream carries; the accepting side answers with the roles swapped.
    """
    cluster_id: int
    from_id: int
    to_id: int
    stream: StreamKind

    def reply(self) -> Hello:
        """The HELLO the accepting side answers this one with."""
        return Hello(self.cluster_id, self.to_id, self.from_id, self.stream)


def frame_header(kind: int, length: int) -> bytes:
    """The 5-byte header of a frame: `frame_header(FrameKind.ACK, 0)` is `b"\\x06\\0\\0\\0\\0"`."""
    return _pack_header(kind, length)


def encode_frame(kind: int, payload: bytes = b"") -> bytes:
    """One whole frame: `encode_frame(FrameKind.MSG, b"ab")` is `b"\\x02\\0\\0\\0\\x02ab"`."""
    return _pack_header(kind, len(payload)) + payload


def encode_hello(hello: Hello) -> bytes:
    """The HELLO frame for `hello` (31 bytes)."""
    return encode_frame(FrameKind.HELLO, _HELLO.pack(
        PROTOCOL_VERSION, hello.cluster_id, hello.from_id, hello.to_id, hello.stream))


def decode_hello(payload: bytes) -> Hello:
    """Parse a HELLO payload; raises `PeerFrameError` for a wrong size, version or stream."""
    if len(payload) != HELLO_BYTES:
        raise PeerFrameError(f"HELLO of {len(payload)} bytes, want {HELLO_BYTES}")
    version, cluster_id, from_id, to_id, stream = _HELLO.unpack(payload)
    if version != PROTOCOL_VERSION:
        raise PeerFrameError(f"unsupported peer protocol version {version} "
                             f"(this member speaks {PROTOCOL_VERSION})")
    if stream not in _STREAM_KINDS:
        raise PeerFrameError(f"unknown stream kind {stream}")
    return Hello(cluster_id, from_id, to_id, StreamKind(stream))


_STREAM_KINDS = frozenset(int(k) for k in StreamKind)


def encode_error(reason: str) -> bytes:
    """The ERROR frame for `reason`, cut to `MAX_ERROR_BYTES` of utf-8."""
    return encode_frame(FrameKind.ERROR, reason.encode("utf-8", "replace")[:MAX_ERROR_BYTES])


def decode_error(payload: bytes) -> str:
    """The reason an ERROR frame carries (a cut multi-byte character becomes U+FFFD)."""
    return payload.decode("utf-8", "replace")


def decode_message(payload: bytes) -> raft_pb2.Message:
    """Parse a MSG or SNAP_HEADER payload; raises `PeerFrameError` if it is no Message."""
    try:
        return raft_pb2.Message.FromString(payload)
    except DecodeError as e:
        raise PeerFrameError(f"unparsable raft message: {e}") from None


def encode_call(call_id: int, method: str, request: bytes) -> bytes:
    """The CALL frame asking `method` with `request`; `call_id` matches the REPLY.

    `encode_call(7, "renew", b"\x08\x2a")` is `08 | 00 00 00 10 | 00..07 | 05 | renew | 08 2a`.
    Raises ValueError for a method name that is empty, not ascii or over 255 bytes (a
    programming error, never input).
    """
    name = method.encode("ascii")
    if not 0 < len(name) <= MAX_METHOD_BYTES:
        raise ValueError(f"peer method name of {len(name)} bytes, want 1 to "
                         f"{MAX_METHOD_BYTES}")
    head = _pack_header(FrameKind.CALL, CALL_HEAD_BYTES + len(name) + len(request))
    return b"".join((head, _pack_call_head(call_id, len(name)), name, request))


def decode_call(payload: bytes) -> tuple[int, str, bytes]:
    """Parse a CALL payload into `(call_id, method, request)`; raises `PeerFrameError` for
    a payload too short for its method name, or a name that is empty or not ascii."""
    if len(payload) < CALL_HEAD_BYTES:
        raise PeerFrameError(f"CALL of {len(payload)} bytes, want at least {CALL_HEAD_BYTES}")
    call_id, name_bytes = _unpack_call_head(payload)
    end = CALL_HEAD_BYTES + name_bytes
    if name_bytes == 0:
        raise PeerFrameError(f"CALL {call_id} without a method name")
    if end > len(payload):
        raise PeerFrameError(f"CALL {call_id} method name of {name_bytes} bytes overruns "
                             f"its {len(payload)}-byte payload")
    try:
        method = payload[CALL_HEAD_BYTES:end].decode("ascii")
    except UnicodeDecodeError:
        raise PeerFrameError(f"CALL {call_id} method name is not ascii") from None
    return call_id, method, payload[end:]


def encode_reply(call_id: int, response: bytes) -> bytes:
    """The REPLY frame answering call `call_id` with `response` (status 0, ok)."""
    return b"".join((_pack_header(FrameKind.REPLY, REPLY_HEAD_BYTES + len(response)),
                     _pack_reply_head(call_id, STATUS_OK), response))


def encode_reply_error(call_id: int, status: int, message: str) -> bytes:
    """The REPLY frame failing call `call_id` with gRPC `status` (1 to 16) and `message`,
    cut to `MAX_ERROR_BYTES` of utf-8 like an ERROR's reason. Raises ValueError for a
    status that is no error code."""
    if not 0 < status <= MAX_STATUS:
        raise ValueError(f"REPLY status {status} is no gRPC error code")
    text = message.encode("utf-8", "replace")[:MAX_ERROR_BYTES]
    return b"".join((_pack_header(FrameKind.REPLY, REPLY_HEAD_BYTES + len(text)),
                     _pack_reply_head(call_id, status), text))


def decode_reply(payload: bytes) -> tuple[int, int, bytes]:
    """Parse a REPLY payload into `(call_id, status, body)`: the body is the response when
    `status` is 0, else the utf-8 message (see `reply_message`). Raises `PeerFrameError`
    for a payload shorter than its head or a status that is no gRPC code."""
    if len(payload) < REPLY_HEAD_BYTES:
        raise PeerFrameError(f"REPLY of {len(payload)} bytes, want at least "
                             f"{REPLY_HEAD_BYTES}")
    call_id, status = _unpack_reply_head(payload)
    if status > MAX_STATUS:
        raise PeerFrameError(f"REPLY {call_id} with unknown status {status}")
    return call_id, status, payload[REPLY_HEAD_BYTES:]


def reply_message(body: bytes) -> str:
    """The error message of a failed REPLY's body (a cut character becomes U+FFFD)."""
    return body.decode("utf-8", "replace")


class FrameDecoder:
    """Splits a connection's bytes into `(kind, payload)` frames.

    Invariants: at most one partial frame is buffered, and its header was checked (known
    kind, length within that kind's limit) before a byte of its payload was kept, so the
    buffer never exceeds `HEADER_BYTES + max_frame_bytes`. After an error the decoder is
    poisoned: `error` holds it and every later `feed` raises it.

    >>> d = FrameDecoder(1024)
    >>> d.feed(b"\\x02\\x00\\x00\\x00\\x02hi\\x06\\x00\\x00\\x00\\x00\\x02\\x00")
    [(2, b'hi'), (6, b'')]
    >>> d.buffered_bytes
    2
    """

    __slots__ = ("_limits", "_buffer", "_need", "error")

    def __init__(self, max_frame_bytes: int) -> None:
        limits = {FrameKind.HELLO: HELLO_BYTES, FrameKind.MSG: max_frame_bytes,
                  FrameKind.SNAP_HEADER: max_frame_bytes, FrameKind.SNAP_CHUNK: SNAP_CHUNK_BYTES,
                  FrameKind.SNAP_END: SHA256_BYTES, FrameKind.ACK: 0,
                  FrameKind.ERROR: MAX_ERROR_BYTES, FrameKind.CALL: max_frame_bytes,
                  FrameKind.REPLY: max_frame_bytes}
        # indexed by kind byte; -1 marks a byte that names no kind
        self._limits = tuple(limits.get(k, -1) for k in range(max(FrameKind) + 1))
        self._buffer = bytearray()      # the partial frame, header included
        self._need = HEADER_BYTES       # bytes the partial frame needs before it is parsed
        self.error: PeerFrameError | None = None

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The frames completed by `data`, in order.

        A bad header stops decoding: the frames before it are returned and `error` is set
        (a `FrameTooLargeError` or `UnknownFrameKindError`); the caller answers ERROR.
        Raises the stored error if called again after that.
        """
        if self.error is not None:
            raise self.error
        buffer = self._buffer
        if buffer:
            buffer += data
            if len(buffer) < self._need:
                return []
            data = bytes(buffer)
            self._buffer = bytearray()
        frames: list[tuple[int, bytes]] = []
        limits, n_kinds = self._limits, len(self._limits)
        pos, end = 0, len(data)
        need = HEADER_BYTES
        while end - pos >= HEADER_BYTES:
            kind, length = _unpack_header(data, pos)
            if kind >= n_kinds or limits[kind] < 0:
                self.error = UnknownFrameKindError(kind)
                return frames
            if length > limits[kind]:
                self.error = FrameTooLargeError(FrameKind(kind), length, limits[kind])
                return frames
            stop = pos + HEADER_BYTES + length
            if stop > end:
                need = stop - pos
                break
            frames.append((kind, data[pos + HEADER_BYTES:stop]))
            pos = stop
        if pos < end:
            self._buffer = bytearray(memoryview(data)[pos:])
        self._need = need
        return frames

    def end_of_stream(self) -> None:
        """Check the connection did not end inside a frame; raises `TruncatedFrameError`."""
        if self.error is None and self._buffer:
            self.error = TruncatedFrameError(len(self._buffer))
        if self.error is not None:
            raise self.error

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the partial frame (at most `HEADER_BYTES + max_frame_bytes`)."""
        return len(self._buffer)
