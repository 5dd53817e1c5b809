"""Writing files so that a crash or kill leaves the old version or the new one, never half of one.

Every file the package writes goes through here: state snapshots (a staging directory of synced
files, renamed as a whole), evaluation rows, reports, per-task configs and exported adapters.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a rename or a new file in ``path`` durable (the entry lives in the directory)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_synced(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it. Not atomic by itself: for files inside a staging directory."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def replace_atomic(path: str | os.PathLike[str], write: Callable[[Path], object]) -> Path:
    """Replace ``path`` atomically with what ``write(temporary)`` writes (and fsyncs): temporary file,
    rename, directory fsync.

    Readers see the previous content or the new one. The file gets the permissions of any other
    file the process creates (``mkstemp`` would make it private). A failure removes the temporary
    file and re-raises the ``OSError`` with its errno.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(descriptor)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)
    return target


def write_atomic(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Replace ``path`` with ``data`` atomically (see :func:`replace_atomic`)."""
    payload = data.encode() if isinstance(data, str) else data
    return replace_atomic(path, lambda temporary: write_synced(temporary, payload))


def private_staging_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new directory in ``parent`` for building something that is renamed into place when complete.

    Made with ``mkdtemp`` (unique name) but given ordinary permissions, so the renamed result
    looks like any other output of the process.
    """
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=parent))
    os.chmod(staging, 0o777 & ~_umask())
    return staging
