"""File digests and the SHA256SUMS list that guards the shipped MNIST copy."""
import gzip
import hashlib
import os
import zlib

from .errors import DataError


def file_digest(path, algorithm):
    """Hex digest (``"md5"``, ``"sha256"``) of the file's bytes, read in 1 MiB chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def content_md5(path):
    """MD5 of the file's content after gunzipping (of the bytes themselves when not .gz)."""
    if not str(path).endswith(".gz"):
        return file_digest(path, "md5")
    h = hashlib.md5()
    try:
        with gzip.open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip file ({e})") from None
    return h.hexdigest()


def read_sha256sums(path):
    """Parse a ``sha256sum`` listing (``<hex>  <name>`` per line) into {name: hex}."""
    sums = {}
    try:
        with open(path, encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read checksum list ({e.strerror})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or len(parts[0]) != 64:
            raise DataError(
                f"{path}, line {number}: expected '<sha256>  <file name>', got {line!r}")
        # sha256sum marks binary mode with a leading '*' on the name
        sums[parts[1].lstrip("*")] = parts[0].lower()
    return sums


def verify_sha256(path, sums_path):
    """Raise DataError unless ``path``'s SHA-256 is the one listed for it in ``sums_path``."""
    name = os.path.basename(path)
    sums = read_sha256sums(sums_path)
    if name not in sums:
        raise DataError(f"{path}: no checksum listed for {name!r} in {sums_path}")
    actual = file_digest(path, "sha256")
    if actual != sums[name]:
        raise DataError(
            f"{path}: SHA-256 mismatch: expected {sums[name]} (from {sums_path}), got {actual}; "
            f"the file is damaged or was replaced")
