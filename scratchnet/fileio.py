"""Atomic file writes: a reader sees the old file or the whole new one, never half of one."""
import contextlib
import os
import tempfile


def atomic_write(path, write, verify=None, suffix=".tmp"):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    ``verify(temp_path)``, if given, runs on the finished temporary file before the rename and
    may raise to reject it. On any failure (Ctrl-C included) the temporary file is removed and
    ``path`` is left as it was.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # same folder, so os.replace is an atomic rename; mkstemp keeps concurrent writers apart
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be readable
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
