"""Optional download of MNIST / Fashion-MNIST from the mirrors torchvision uses.

Files land in ``ROOT/MNIST/raw/`` (``ROOT/FashionMNIST/raw/``), the layout torchvision
downloads into, so one folder serves both libraries. Each file is written to a temporary
name, checked, then renamed, so an interrupted or corrupt download never leaves a file
that looks complete.
"""
import http.client
import logging
import os
import urllib.error
import urllib.request

from ..fileio import atomic_write
from .checksums import content_md5, file_digest, read_sha256sums
from .errors import DataError
from .resources import FILES, SHIPPED_MNIST_DIR, dataset_spec

logger = logging.getLogger(__name__)


def verify_download(path, dataset, base, label=None):
    """Raise DataError unless ``path`` holds the genuine ``base`` file of ``dataset``.

    Accepted when any of these holds (cheapest first):
      * its MD5 is torchvision's MD5 of the upstream .gz file;
      * (MNIST) its SHA-256 is listed in the shipped SHA256SUMS, i.e. it is the shipped copy;
      * its content after gunzipping has the known MD5 (the same data, recompressed).
    ``label`` names the file in the message (the URL when checking a download).
    """
    spec = dataset_spec(dataset)
    label = label or path
    md5 = file_digest(path, "md5")
    if md5 == spec["gz_md5"][base]:
        return
    sums_path = os.path.join(SHIPPED_MNIST_DIR, "SHA256SUMS")
    if dataset == "mnist" and os.path.isfile(sums_path):
        if file_digest(path, "sha256") == read_sha256sums(sums_path).get(base + ".gz"):
            return
    mismatch = f"{label}: checksum mismatch: MD5 {md5} is not the expected {spec['gz_md5'][base]}"
    try:
        content = content_md5(path)
    except DataError:
        raise DataError(f"{mismatch}, and the file is not valid gzip") from None
    if content != spec["content_md5"][base]:
        raise DataError(
            f"{mismatch}, and the uncompressed content's MD5 {content} is not "
            f"{spec['content_md5'][base]}")


def _fetch(url, target, timeout, dataset, base):
    """Download ``url``, verify it, then atomically move it to ``target``."""
    def write(out):
        with urllib.request.urlopen(url, timeout=timeout) as response:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                out.write(chunk)

    atomic_write(target, write, verify=lambda tmp: verify_download(tmp, dataset, base, label=url),
                 suffix=".part")


def _describe(url, error, timeout):
    """One readable line saying why downloading ``url`` failed."""
    if isinstance(error, DataError):
        return str(error)  # already names the URL
    if isinstance(error, urllib.error.HTTPError):
        return f"{url}: HTTP {error.code} {error.reason}"
    if isinstance(error, urllib.error.URLError) and isinstance(error.reason, Exception):
        error = error.reason
    if isinstance(error, TimeoutError):
        return f"{url}: timed out after {timeout} s"
    return f"{url}: {error or type(error).__name__}"


def _already_there(raw, dataset, base):
    """True when ``raw`` already holds a verified copy of ``base`` (.gz or uncompressed)."""
    for name in (base + ".gz", base):
        path = os.path.join(raw, name)
        if os.path.isfile(path):
            try:
                verify_download(path, dataset, base)
                return True
            except DataError:
                pass
    return False


def download_mnist(root, mirrors=None, dataset="mnist", timeout=30.0):
    """Download the four .gz files of ``dataset`` into ``root/<MNIST|FashionMNIST>/raw/``.

    Files already there and verified are kept. For each missing file the mirrors are tried
    in order (``mirrors``: base URLs; default torchvision's list for ``dataset``); a mirror
    that fails (network error, HTTP error, timeout after ``timeout`` seconds, checksum
    mismatch) is skipped. Returns the raw folder. Raises DataError listing every mirror's
    failure when a file cannot be fetched from any of them.
    """
    spec = dataset_spec(dataset)
    mirrors = tuple(spec["mirrors"] if mirrors is None else mirrors)
    if not mirrors:
        raise ValueError("download_mnist: mirrors is empty; give at least one base URL")
    raw = os.path.join(os.fspath(root), spec["folder"], "raw")
    os.makedirs(raw, exist_ok=True)
    for base in FILES["train"] + FILES["test"]:
        if _already_there(raw, dataset, base):
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + base + ".gz"
            logger.info("downloading %s", url)
            try:
                _fetch(url, os.path.join(raw, base + ".gz"), timeout, dataset, base)
                break
            except (OSError, http.client.HTTPException, DataError) as e:
                failures.append(_describe(url, e, timeout))
        else:
            raise DataError(
                f"could not download {base}.gz for {dataset} into {raw}:\n  "
                + "\n  ".join(failures))
    return raw
