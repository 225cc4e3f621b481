"""What an ``.npz`` declares, read from its members' headers before any array is allocated.

``np.load`` allocates each array at the size its header declares, then fills it from the zip
member; a 1 MB file may so ask for gigabytes. :func:`npz_headers` reads only the headers
(a few hundred bytes per member) and checks that each declared size is what the zip member
holds and what its compressed bytes can hold, so callers can compare shapes first.
"""
import math
import os
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy_format

from .errors import DataError

# deflate cannot compress better than about 1032:1 (a 258-byte match in 2 bits, plus blocks)
MAX_DEFLATE_RATIO = 1032
_SLACK = 1024


def _header(f):
    """(shape, dtype) from a .npy stream positioned at its start; ValueError if not one."""
    version = npy_format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = npy_format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = npy_format.read_array_header_2_0(f)
    else:
        raise ValueError(f".npy format version {version} is not one numpy writes")
    return tuple(shape), dtype


def _check_member(path, info, f, error):
    shape, dtype = _header(f)
    key = info.filename[:-len(".npy")] if info.filename.endswith(".npy") else info.filename
    if dtype.hasobject:
        raise error(f"{path}: array {key!r} holds Python objects ({dtype}), which only "
                    f"unpickling could read; scratchnet never unpickles (it can run code)")
    declared = f.tell() + math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if info.compress_type == zipfile.ZIP_STORED:
        holds = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:  # what np.savez_compressed writes
        holds = info.compress_size * MAX_DEFLATE_RATIO + _SLACK
    else:  # bzip2 and lzma can pack more; the member's own size is all there is to go by
        holds = info.file_size
    if declared != info.file_size or declared > holds:
        raise error(
            f"{path}: array {key!r} declares shape {shape} of {dtype} ({declared} bytes), "
            f"but the file holds {min(info.file_size, holds)} bytes for it: the file is "
            f"damaged or truncated")
    return key, (shape, dtype)


def npz_headers(path, error=DataError):
    """{name: (shape, dtype)} of every array in the ``.npz`` at ``path``, without loading any.

    Raises ``error`` (a ValueError class) naming ``path`` when the file is missing, not a
    zip archive, holds a member that is not a plain .npy array (pickled objects included),
    or declares more bytes than its members hold.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise error(f"{path}: is a folder, not an .npz file")
    if not os.path.isfile(path):
        raise error(f"{path}: no such file")
    size = os.path.getsize(path)
    headers = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                if info.compress_size > size:
                    raise error(f"{path}: truncated: member {info.filename!r} declares "
                                f"{info.compress_size} bytes, the file has {size}")
                with archive.open(info) as f:
                    try:
                        key, header = _check_member(path, info, f, error)
                    except (ValueError, SyntaxError) as e:
                        if isinstance(e, error):
                            raise
                        raise error(f"{path}: member {info.filename!r} is not a plain .npy "
                                    f"array ({' '.join(str(e).split())[:120]})") from None
                headers[key] = header
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, zlib.error,
            NotImplementedError) as e:
        raise error(f"{path}: not a readable .npz file (corrupt or truncated: {e})") from None
    return headers
