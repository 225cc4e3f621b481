"""Atomic file writes: a reader sees the old file or the whole new one, never half of one.

The new content goes to a hidden temporary file beside the target, ``.<name>.<8 random
characters><suffix>``, renamed over the target once complete. A process killed mid-write
(``kill -9``, power loss) leaves that temporary behind; the next write of the same target
removes it, and :func:`remove_stale_temps` clears a whole folder (for a resumed run).
"""
import contextlib
import os
import re
import tempfile

TEMP_SUFFIXES = (".tmp", ".part")


def _temp_pattern(name=None, suffixes=TEMP_SUFFIXES):
    """Names :func:`atomic_write` gives its temporaries (of target ``name``, or of any)."""
    target = re.escape(name) if name is not None else ".+"
    ends = "|".join(re.escape(s) for s in suffixes)
    # tempfile.mkstemp draws 8 characters from a-z, 0-9 and _
    return re.compile(rf"\.{target}\.[a-z0-9_]{{8}}(?:{ends})")


def _remove_matching(folder, pattern, keep=None):
    removed = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(folder):
            if entry.path != keep and pattern.fullmatch(entry.name) and entry.is_file():
                with contextlib.suppress(FileNotFoundError):
                    os.remove(entry.path)
                    removed.append(entry.path)
    return sorted(removed)


def remove_stale_temps(folder):
    """Delete the temporaries an interrupted :func:`atomic_write` left in ``folder``.

    Only names of the form ``.<name>.<8 characters>.tmp`` (or ``.part``) are touched; call
    it when no other process is writing into ``folder`` (e.g. before resuming a run there).
    Returns the removed paths, sorted.
    """
    return _remove_matching(os.fspath(folder), _temp_pattern())


def _naming_target(error, tmp, path):
    """``error`` reworded to name ``path`` instead of the temporary file, if it named it."""
    if tmp is not None and isinstance(error, OSError) and error.errno is not None \
            and tmp in (error.filename, error.filename2):
        return type(error)(error.errno, error.strerror, path)
    return None


def _would_be_temp(error, name, suffix):
    filename = getattr(error, "filename", None)
    if isinstance(filename, str) and _temp_pattern(name, (suffix,)).fullmatch(
            os.path.basename(filename)):
        return filename
    return None


def atomic_write(path, write, verify=None, suffix=".tmp"):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    ``verify(temp_path)``, if given, runs on the finished temporary file before the rename and
    may raise to reject it. On any failure (Ctrl-C included) the temporary file is removed,
    ``path`` is left as it was, and an OSError names ``path``, never the temporary. Stale
    temporaries of ``path`` from a killed earlier write are removed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    name = os.path.basename(path)
    tmp = None
    try:
        # same folder, so os.replace is an atomic rename; mkstemp keeps concurrent writers apart
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=suffix)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if verify is not None:
            verify(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these files are meant to be readable
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        # mkstemp's own errors name the file it could not create
        reworded = _naming_target(e, tmp or _would_be_temp(e, name, suffix), path)
        if reworded is not None:
            raise reworded from None
        raise
    _remove_matching(folder, _temp_pattern(name, (suffix,)), keep=tmp)
