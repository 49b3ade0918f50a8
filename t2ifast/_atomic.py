"""Files written so that a reader (or a run killed mid-write) never sees half of one."""

import contextlib
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_file(path, *, durable=False):
    """Yields a temporary path beside `path` to write to; when the block succeeds the file replaces `path` in one
    rename, when it fails the file is removed. Missing folders are made. The file is readable by others (mkstemp
    makes it private). durable: also fsync the file and the folder, so the rename survives a power loss."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(descriptor)
    try:
        yield Path(temporary)
        os.chmod(temporary, 0o644)
        if durable:
            _fsync(temporary, os.O_RDONLY)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if durable:
        _fsync(path.parent, os.O_RDONLY)


def _fsync(path, flags):
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
