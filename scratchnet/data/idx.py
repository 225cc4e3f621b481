"""Reader for the IDX format that MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the values in C order, big-endian. Files may be gzipped.

The header is read and checked against what the file holds before the values are: a small
``.gz`` that declares a million images fails in milliseconds, not after gigabytes.
"""
import contextlib
import gzip
import math
import os
import struct
import zlib

import numpy as np

from .errors import DataError

# dtype code (third magic byte) -> numpy dtype; multi-byte types are big-endian in the file
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20


def _is_gzip(path):
    with open(path, "rb") as f:
        return str(path).endswith(".gz") or f.read(2) == _GZIP_MAGIC


@contextlib.contextmanager
def _opened(path):
    """The file's content as a binary stream (gunzipped as it is read), and whether gzipped;
    a damaged gzip stream becomes a DataError wherever it is noticed."""
    gzipped = _is_gzip(path)
    try:
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as f:
            yield f, gzipped
    except (OSError, EOFError, zlib.error) as e:
        if not gzipped or isinstance(e, FileNotFoundError):
            raise
        # gzip.BadGzipFile is an OSError; a cut-off stream raises EOFError
        raise DataError(f"{path}: corrupt gzip file ({e}); delete it and fetch it again") from None


def _read_header(f, path):
    """(shape, dtype, header bytes) from the start of the stream ``f``."""
    magic = f.read(4)
    if len(magic) < 4:
        raise DataError(
            f"{path}: truncated IDX header: expected at least 4 bytes, got {len(magic)}")
    zero0, zero1, code, ndim = magic
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: wrong magic number 0x{magic.hex()}: an IDX file starts with "
            f"0x0000 followed by a dtype code and the number of dimensions")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{path}: unsupported IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    dims = f.read(4 * ndim)
    if len(dims) < 4 * ndim:
        raise DataError(
            f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, "
            f"got {4 + len(dims)}")
    return struct.unpack(f">{ndim}I", dims), IDX_DTYPES[code], header


def read_idx_header(path):
    """The shape and dtype an IDX file (raw or .gz) declares, reading only its header.

    Lets a caller compare two files (images and labels) before either is loaded.
    Raises DataError naming ``path`` when the file is missing or the header is bad.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such IDX file")
    with _opened(path) as (f, _):
        shape, dtype, _ = _read_header(f, path)
    return shape, dtype


def _length_error(path, shape, dtype, expected, got, more=False):
    what = "too long" if more or got > expected else "truncated"
    return DataError(
        f"{path}: {what}: header declares shape {shape} of {dtype.name}, so expected "
        f"{expected} bytes, got {got}{' or more' if more else ''}")


def _gzip_length(path):
    """The length the gzip trailer records (ISIZE: the content's length mod 2**32)."""
    with open(path, "rb") as f:
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def _count_rest(f, limit):
    """Bytes left in the stream, counted without keeping them, stopping past ``limit``."""
    n = 0
    while n <= limit:
        chunk = f.read(_CHUNK)
        if not chunk:
            break
        n += len(chunk)
    return n


def _read_body(f, nbytes):
    """Exactly the next ``nbytes`` of the stream into one new uint8 array (None if short)."""
    body = np.empty(nbytes, dtype=np.uint8)
    view = memoryview(body)
    done = 0
    while done < nbytes:
        chunk = f.read(min(_CHUNK, nbytes - done))
        if not chunk:
            return None, done
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    return body, done


def read_idx(path):
    """Read an IDX file (raw or .gz) into a numpy array of its declared shape and type.

    Returns an array of shape ``(d0, d1, ...)`` as declared in the header, native byte
    order, writable (no other array shares its memory). Raises DataError naming ``path``
    when the file is missing, the gzip stream is corrupt, the magic number is wrong, the
    dtype code is unsupported, or the data length disagrees with the header. The length is
    checked before the values are allocated: against the file's size, or for gzip against
    the trailer's record of the content's length (and, when that disagrees, by counting).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such IDX file")
    if os.path.getsize(path) < 4:
        got = os.path.getsize(path)
        raise DataError(f"{path}: truncated IDX header: expected at least 4 bytes, got {got}")
    with _opened(path) as (f, gzipped):
        shape, dtype, header = _read_header(f, path)
        nbytes = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
        expected = header + nbytes
        if not gzipped:
            size = os.path.getsize(path)
            if size != expected:
                raise _length_error(path, shape, dtype, expected, size)
        elif _gzip_length(path) != expected % 2**32:
            # a lying header, or a file of several gzip members: count, keeping nothing
            got = header + _count_rest(f, nbytes)
            if got != expected:
                raise _length_error(path, shape, dtype, expected, got, more=got > expected)
            f.seek(header)
        body, done = _read_body(f, nbytes)
        if body is None:
            raise _length_error(path, shape, dtype, expected, header + done)
        if f.read(1):
            raise _length_error(path, shape, dtype, expected, expected + 1, more=True)
    values = body.view(dtype).reshape(shape)
    # multi-byte types are big-endian in the file; astype makes them native
    return values if dtype.isnative else values.astype(dtype.newbyteorder("="))
