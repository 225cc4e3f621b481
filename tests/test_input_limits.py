"""Compressed inputs are checked against what they declare before anything is allocated.

Each test builds a small file that declares a huge array and measures, with tracemalloc
(which sees numpy's allocations), that refusing it stays within a few megabytes.
"""
import gzip
import io
import struct
import tracemalloc
import zipfile
import zlib

import numpy as np
import pytest

from scratchnet.checkpoint import CheckpointError, load_checkpoint
from scratchnet.data import DataError, load_mnist, read_idx
from scratchnet.data.multidigit import load_multidigit_npz
from scratchnet.data.npz import npz_headers

SMALL = 8 * 2**20  # bytes: what refusing a file may cost
CHUNK = 1 << 20


def peak_bytes(call):
    """(peak bytes traced while running ``call()``, the exception it raised or None)."""
    tracemalloc.start()
    try:
        call()
        error = None
    except (DataError, CheckpointError) as e:
        error = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error


def idx_header(shape, code=0x08):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape)


def gzip_of(head, zeros):
    """A gzip file of ``head`` then ``zeros`` zero bytes, built without holding the zeros:
    after a full flush deflate forgets its history, so every 1 MiB of zeros compresses to
    the same bytes, and the CRC is carried chunk by chunk."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts = [packer.compress(head), packer.flush(zlib.Z_FULL_FLUSH)]
    block = packer.compress(bytes(CHUNK)) + packer.flush(zlib.Z_FULL_FLUSH)
    chunks, rest = divmod(zeros, CHUNK)
    crc = zlib.crc32(head)
    for _ in range(chunks):
        crc = zlib.crc32(bytes(CHUNK), crc)
    crc = zlib.crc32(bytes(rest), crc)
    body = b"".join(parts) + block * chunks + packer.compress(bytes(rest)) + packer.flush()
    size = (len(head) + zeros) % 2**32
    return b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff" + body + struct.pack("<II", crc, size)


def test_the_gzip_builder_writes_what_gzip_reads():
    data = gzip.decompress(gzip_of(b"head", 3 * CHUNK + 5))
    assert data == b"head" + bytes(3 * CHUNK + 5)


def test_a_small_gz_declaring_a_million_images_fails_in_small_memory(tmp_path):
    path = tmp_path / "images.gz"
    path.write_bytes(gzip_of(idx_header((1_000_000, 28, 28)), 10 * 28 * 28))
    peak, error = peak_bytes(lambda: read_idx(path))
    assert isinstance(error, DataError) and str(path) in str(error) and "truncated" in str(error)
    assert peak < SMALL, peak


def test_a_million_blank_images_against_ten_labels_fail_before_decompressing(tmp_path):
    # an honest file this time: 784 MB of zeros in under 1 MB of gzip
    images = tmp_path / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip_of(idx_header((1_000_000, 28, 28)), 1_000_000 * 28 * 28))
    assert images.stat().st_size < 1_000_000
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(idx_header((10,)) + bytes(10)))
    peak, error = peak_bytes(lambda: load_mnist("test", data_dir=tmp_path))
    assert isinstance(error, DataError) and "1000000 images" in str(error), error
    assert peak < SMALL, peak


def test_a_gz_of_several_members_still_loads(tmp_path):
    array = (np.arange(600) % 256).astype(np.uint8).reshape(6, 10, 10)
    raw = idx_header(array.shape) + array.tobytes()
    path = tmp_path / "two-members.gz"
    path.write_bytes(gzip.compress(raw[:100]) + gzip.compress(raw[100:]))
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_dimensions_whose_product_overflows_name_the_file(tmp_path, suffix):
    head = idx_header((2**32 - 1,) * 4)
    path = tmp_path / f"overflow{suffix}"
    path.write_bytes(gzip.compress(head + bytes(16)) if suffix else head + bytes(16))
    with pytest.raises(DataError, match=f"^{path}: truncated: header declares shape"):
        read_idx(path)


def npz_with_member(path, name, shape, data=b"", dtype="<f4"):
    """An .npz whose member ``name`` declares ``shape`` but holds only ``data``."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": dtype, "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(name + ".npy", header.getvalue() + data)
    return path


def test_an_npz_member_declaring_more_than_it_holds_is_refused_unallocated(tmp_path):
    path = npz_with_member(tmp_path / "c.npz", "meta", (250_000_000,), bytes(64))
    peak, error = peak_bytes(lambda: load_checkpoint(path))
    assert isinstance(error, CheckpointError) and str(path) in str(error), error
    assert "'meta' declares shape (250000000,)" in str(error)
    assert peak < SMALL, peak


def test_an_npz_whose_zip_directory_lies_about_the_size_is_refused(tmp_path):
    declared = 4 * 250_000_000
    path = npz_with_member(tmp_path / "lie.npz", "images", (250_000_000,), bytes(64))
    data = bytearray(path.read_bytes())  # patch the uncompressed size in both zip headers
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        at = data.index(signature)
        real = struct.unpack_from("<I", data, at + offset)[0]
        struct.pack_into("<I", data, at + offset, real - 64 + declared)
    path.write_bytes(bytes(data))
    assert zipfile.ZipFile(path).getinfo("images.npy").file_size > declared
    peak, error = peak_bytes(lambda: npz_headers(path))
    assert isinstance(error, DataError) and "lie.npz" in str(error), error
    assert peak < SMALL, peak


def test_a_two_digit_npz_with_more_images_than_labels_fails_before_loading(tmp_path):
    n = 200_000  # 235 MB of blank canvases, honestly compressed
    path = tmp_path / "train_multi_digit.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("images.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (n, 42, 28)})
            for _ in range(n * 42 * 28 // CHUNK):
                f.write(bytes(CHUNK))
            f.write(bytes(n * 42 * 28 % CHUNK))
        buffer = io.BytesIO()
        np.save(buffer, np.zeros((2, 10), dtype=np.int64))
        archive.writestr("labels.npy", buffer.getvalue())
    peak, error = peak_bytes(lambda: load_multidigit_npz(path))
    assert isinstance(error, DataError) and "200000 images but 10 label pairs" in str(error)
    assert peak < SMALL, peak


def test_pickled_npz_content_gets_no_advice_to_unpickle(tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, meta=np.array([{"a": 1}], dtype=object))
    pickled = tmp_path / "pickled.npz"
    pickled.write_bytes(b"\x80\x04\x95" + bytes(40))  # a pickle stream, not a zip
    for path in (objects, pickled):
        for load, error in ((load_checkpoint, CheckpointError),
                            (load_multidigit_npz, DataError)):
            with pytest.raises(error) as info:
                load(path)
            message = str(info.value)
            assert str(path) in message and "allow_pickle" not in message, message
    with pytest.raises(CheckpointError, match="Python objects"):
        load_checkpoint(objects)
