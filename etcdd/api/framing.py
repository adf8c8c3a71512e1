"""gRPC's wire details below HTTP/2: 5-byte message framing, grpc-timeout, grpc-message.

Core (pure). Wire-compatible with the gRPC-over-HTTP/2 protocol
(`doc/PROTOCOL-HTTP2.md`) as grpc-go 1.33 (the version under etcd 3.4) speaks it: error
messages are grpc-go's (`rpc_util.go recvMsg/checkRecvPayload`,
`internal/transport/http_util.go decodeTimeout/encodeGrpcMessage`), so clients see what
an etcd server would send them.

A message on the wire is a 5-byte prefix then the payload::

    0x00 | 00 00 00 03 | 0a 01 6b        compressed-flag, big-endian length, payload
"""
from __future__ import annotations

import re
import struct
from functools import lru_cache

from etcdd.api.rpctypes import GrpcError, Status

PREFIX = struct.Struct(">BI")
PREFIX_BYTES = PREFIX.size       # 5

_pack_prefix = PREFIX.pack
_unpack_prefix = PREFIX.unpack_from


class FramingError(GrpcError):
    """A message stream that does not follow gRPC framing; fails that call only."""


class MessageTooLargeError(FramingError):
    """The length prefix announces more than the receiver accepts (refused unbuffered)."""

    def __init__(self, length: int, max_message_bytes: int) -> None:
        # grpc-go rpc_util.go recvMsg
        super().__init__(Status.RESOURCE_EXHAUSTED,
                         f"grpc: received message larger than max "
                         f"({length} vs. {max_message_bytes})")
        self.length = length
        self.max_message_bytes = max_message_bytes


class CompressedMessageError(FramingError):
    """The compressed flag is set; we negotiate no compression (grpc-accept-encoding)."""

    def __init__(self, encoding: str) -> None:
        # grpc-go rpc_util.go checkRecvPayload
        if encoding in ("", "identity"):
            super().__init__(Status.INTERNAL,
                             "grpc: compressed flag set with identity or empty encoding")
        else:
            super().__init__(Status.UNIMPLEMENTED,
                             f'grpc: Decompressor is not installed for grpc-encoding "{encoding}"')


class PayloadFormatError(FramingError):
    """The flag byte is neither 0 (plain) nor 1 (compressed)."""

    def __init__(self, flag: int) -> None:
        super().__init__(Status.INTERNAL, f"grpc: received unexpected payload format {flag}")


class TruncatedMessageError(FramingError):
    """The stream ended inside a message (or, for a unary call, before any message)."""

    def __init__(self) -> None:
        # grpc-go toRPCErr(io.ErrUnexpectedEOF)
        super().__init__(Status.INTERNAL, "unexpected EOF")


class MalformedTimeoutError(GrpcError):
    """A grpc-timeout header that does not parse."""

    def __init__(self, reason: str) -> None:
        # grpc-go http_util.go decodeHeader: "transport: malformed time-out: %v"
        super().__init__(Status.INTERNAL, f"transport: malformed time-out: {reason}")


def encode(payload: bytes) -> bytes:
    """Frame one uncompressed message: `encode(b"k")` is `b"\\x00\\x00\\x00\\x00\\x01k"`."""
    return _pack_prefix(0, len(payload)) + payload


class Deframer:
    """Splits one stream's DATA into message payloads.

    Invariants: at most one partial message is buffered, and its announced length was
    checked against `max_message_bytes` before a byte of its body was kept; after an
    error the deframer is poisoned (the call is over) and every later call raises it again.

    >>> d = Deframer(4)
    >>> d.feed(b"\\x00\\x00\\x00\\x00\\x02hi\\x00\\x00")
    [b'hi']
    >>> d.feed(b"\\x00\\x00\\x00")
    [b'']
    """

    __slots__ = ("_max", "_buffer", "_need", "_encoding", "_error")

    def __init__(self, max_message_bytes: int, encoding: str = "") -> None:
        self._max = max_message_bytes
        self._buffer = b""          # the partial message (prefix included), bytes or bytearray
        self._need = 0              # total bytes the buffered message needs; 0 = unknown yet
        self._encoding = encoding   # the call's grpc-encoding, only for the error text
        self._error: FramingError | None = None

    def feed(self, data: bytes) -> list[bytes]:
        """The payloads completed by `data`, in order.

        Raises a `FramingError` (a `GrpcError` carrying grpc-go's status and text) for a
        set compressed flag, an unknown flag, or a length over the maximum.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        if buffer:
            if self._need and len(buffer) + len(data) < self._need:
                if type(buffer) is bytes:
                    buffer = self._buffer = bytearray(buffer)
                buffer += data
                return []
            if type(buffer) is bytes:
                data = buffer + data
            else:
                buffer += data
                data = bytes(buffer)
            self._buffer = b""
        messages: list[bytes] = []
        pos, end = 0, len(data)
        while end - pos >= PREFIX_BYTES:
            flag, length = _unpack_prefix(data, pos)
            if flag or length > self._max:
                self._error = self._refusal(flag, length)
                raise self._error
            stop = pos + PREFIX_BYTES + length
            if stop > end:
                self._need = stop - pos
                break
            messages.append(data[pos + PREFIX_BYTES:stop])
            pos = stop
        else:
            self._need = 0
        if pos < end:
            self._buffer = data[pos:] if pos else data
        return messages

    def end_of_stream(self) -> None:
        """Check the stream did not end inside a message; raises `TruncatedMessageError`."""
        if self._error is None and self._buffer:
            self._error = TruncatedMessageError()
        if self._error is not None:
            raise self._error

    @property
    def buffered_bytes(self) -> int:
        """Bytes held for the partial message (bounded by max_message_bytes + 5)."""
        return len(self._buffer)

    def _refusal(self, flag: int, length: int) -> FramingError:
        if flag == 1:
            return CompressedMessageError(self._encoding)
        if flag:
            return PayloadFormatError(flag)
        return MessageTooLargeError(length, self._max)


_TIMEOUT_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_timeout(value: str) -> float:
    """A grpc-timeout header value in seconds: `"200m"` is 0.2, `"1H"` is 3600.0.

    Raises `MalformedTimeoutError` with grpc-go's reason (`decodeTimeout`).
    """
    if len(value) < 2:
        raise MalformedTimeoutError(f'transport: timeout string is too short: "{value}"')
    if len(value) > 9:   # the spec allows 8 digits plus the unit
        raise MalformedTimeoutError(f'transport: timeout string is too long: "{value}"')
    unit = _TIMEOUT_UNIT_SECONDS.get(value[-1])
    if unit is None:
        raise MalformedTimeoutError(f'transport: timeout unit is not recognized: "{value}"')
    digits = value[:-1]
    if not (digits.isascii() and digits.isdigit()):
        raise MalformedTimeoutError(f'strconv.ParseInt: parsing "{digits}": invalid syntax')
    return int(digits) * unit


# grpc-go encodeGrpcMessage: bytes 0x20-0x7E pass except '%'; everything else is %XX
# (UTF-8 bytes, upper-case hex).
_PLAIN_MESSAGE = re.compile(rb"[ -$&-~]*")
_PERCENT = [bytes((b,)) if 0x20 <= b <= 0x7E and b != 0x25 else b"%%%02X" % b
            for b in range(256)]
_PERCENT_ESCAPE = re.compile(rb"%([0-9A-Fa-f]{2})")


@lru_cache(maxsize=512)
def encode_grpc_message(message: str) -> bytes:
    """The grpc-message header value for `message`: `"a%b\\n"` gives `b"a%25b%0A"`."""
    raw = message.encode("utf-8", "replace")
    if _PLAIN_MESSAGE.fullmatch(raw):
        return raw
    return b"".join([_PERCENT[b] for b in raw])


OK_TRAILERS = [(b"grpc-status", b"0")]
_STATUS_VALUES = {code: str(int(code)).encode() for code in Status}


def status_trailers(code: int, message: str) -> list[tuple[bytes, bytes]]:
    """The grpc-status / grpc-message header fields for a call's status."""
    value = _STATUS_VALUES.get(code) or str(int(code)).encode()
    if not message:
        return [(b"grpc-status", value)]
    return [(b"grpc-status", value), (b"grpc-message", encode_grpc_message(message))]


def decode_grpc_message(value: bytes) -> str:
    """The inverse of `encode_grpc_message` (grpc-go decodeGrpcMessage)."""
    return _PERCENT_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), value).decode(
        "utf-8", "replace")
