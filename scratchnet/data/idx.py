"""Reader for the IDX format that MNIST and Fashion-MNIST ship in.

An IDX file is a 4-byte magic number ``0x00 0x00 <dtype code> <ndim>``, then ``ndim``
big-endian uint32 dimensions, then the values in C order, big-endian. Files may be gzipped.
"""
import gzip
import os
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


def _read_bytes(path):
    """The file's bytes, gunzipped when the name ends in .gz or the content is gzip."""
    with open(path, "rb") as f:
        raw = f.read()
    if not (str(path).endswith(".gz") or raw[:2] == _GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; a cut-off stream raises EOFError
        raise DataError(f"{path}: corrupt gzip file ({e}); delete it and fetch it again") from None


def read_idx(path):
    """Read an IDX file (raw or .gz) into a numpy array of its declared shape and type.

    Returns an array of shape ``(d0, d1, ...)`` as declared in the header, native byte
    order, writable (it owns its memory). Raises DataError naming ``path`` when the file is
    missing, the gzip stream is corrupt, the magic number is wrong, the dtype code is
    unsupported, or the data length disagrees with the header.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such IDX file")
    data = _read_bytes(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated IDX header: expected at least 4 bytes, got {len(data)}")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"{path}: wrong magic number 0x{data[:4].hex()}: an IDX file starts with "
            f"0x0000 followed by a dtype code and the number of dimensions")
    if code not in IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in IDX_DTYPES)
        raise DataError(f"{path}: unsupported IDX dtype code 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(
            f"{path}: truncated IDX header: expected {header} bytes for {ndim} dimensions, "
            f"got {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise DataError(
            f"{path}: {what}: header declares shape {shape} of {dtype.name}, so expected "
            f"{expected} bytes, got {len(data)}")
    values = np.frombuffer(data, dtype=dtype, offset=header).reshape(shape)
    # astype copies, which also makes the result writable and native-endian
    return values.astype(dtype.newbyteorder("="))
