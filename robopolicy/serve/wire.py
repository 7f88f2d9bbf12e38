"""The wire format: msgpack, with numpy arrays as typed binary. Never pickle.

Arrays travel as openpi's client writes them (``openpi_client.msgpack_numpy``), so its robot code talks
to our server unchanged: ``{b"__ndarray__": True, b"data": bytes, b"dtype": "<f4", b"shape": [..]}``
and numpy scalars as ``{b"__npgeneric__": True, b"data": value, b"dtype": "<f4"}``.

Decoding trusts nothing: the dtype must be on a whitelist (no object, void or complex dtypes), the
shape must be a short list of small non-negative integers whose product fits the cap, and the byte count
must equal what the shape and dtype need, checked before anything is allocated. Anything else is one
WireError naming the problem; the server turns it into an error reply.
"""
from __future__ import annotations

import math

import msgpack
import numpy as np

# what arrays may hold: bools, integers, floats (no objects, structured "void" records or complex)
DTYPES = frozenset(np.dtype(d).str for d in (
    "bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32",
    "float64")) | frozenset(np.dtype(d).newbyteorder(">").str for d in (
        "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"))
MAX_DIMS = 8
MAX_ELEMENTS = 16 * 2 ** 20  # per array: 16 Mi elements (a 16-frame window of two 512x512 RGB cameras fits)


class WireError(ValueError):
    """A message that is not what the protocol allows; the text says what and how to fix it."""


def _encode(obj):
    if isinstance(obj, np.ndarray):
        if obj.dtype.str not in DTYPES:
            raise WireError(f"cannot send arrays of dtype {obj.dtype}: send bool, integer or float arrays")
        return {b"__ndarray__": True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str,
                b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.str not in DTYPES:
            raise WireError(f"cannot send scalars of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise WireError(f"cannot send a {type(obj).__name__}: send dicts, lists, strings, numbers and numpy arrays")


def packb(obj) -> bytes:
    """``obj`` (dicts, lists, str, bytes, numbers, numpy arrays and scalars) as one message."""
    return msgpack.packb(obj, default=_encode, use_bin_type=True)


def _array(obj: dict) -> np.ndarray:
    dtype, shape, data = obj.get(b"dtype"), obj.get(b"shape"), obj.get(b"data")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(f"array dtype {dtype!r} is not allowed: send bool, integer or float arrays "
                        "(little- or big-endian)")
    if not isinstance(shape, list | tuple) or len(shape) > MAX_DIMS or \
            not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise WireError(f"array shape {str(shape)[:80]} is not a list of at most {MAX_DIMS} non-negative sizes")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise WireError(f"array of shape {tuple(shape)} holds {count} elements, more than the {MAX_ELEMENTS} allowed")
    if not isinstance(data, bytes):
        raise WireError("array data must be bytes")
    need = count * np.dtype(dtype).itemsize
    if len(data) != need:
        raise WireError(f"array of shape {tuple(shape)} and dtype {dtype} needs {need} bytes, the message has "
                        f"{len(data)}: a truncated or corrupt frame")
    # a read-only view of the message's bytes; the caller copies what it keeps
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def _scalar(obj: dict):
    dtype, data = obj.get(b"dtype"), obj.get(b"data")
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise WireError(f"scalar dtype {dtype!r} is not allowed: send a bool, integer or float")
    if isinstance(data, bool | int | float):
        try:
            return np.dtype(dtype).type(data)
        except (OverflowError, ValueError):
            pass
    raise WireError(f"scalar {str(data)[:40]} does not fit dtype {dtype}")


def _hook(obj: dict):
    if b"__ndarray__" in obj:
        return _array(obj)
    if b"__npgeneric__" in obj:
        return _scalar(obj)
    return obj


def _no_ext(code, data):
    raise WireError(f"msgpack extension types (here {code}) are not part of the protocol")


def unpackb(frame: bytes | bytearray | memoryview, max_bytes: int | None = None):
    """One message -> Python objects with numpy arrays; WireError for anything the protocol refuses."""
    if not isinstance(frame, bytes | bytearray | memoryview):
        raise WireError("messages are binary msgpack frames; this one is text")
    if max_bytes is not None and len(frame) > max_bytes:
        raise WireError(f"a {len(frame)}-byte message is larger than the {max_bytes} allowed")
    try:
        # strict map keys off: openpi's arrays use bytes keys
        # (msgpack bounds every length by the frame's own size)
        return msgpack.unpackb(frame, object_hook=_hook, raw=False, strict_map_key=False, ext_hook=_no_ext)
    except WireError:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a garbage frame makes msgpack raise is the sender's error
        raise WireError(f"not a msgpack message ({type(e).__name__}: {str(e)[:80]})") from None
