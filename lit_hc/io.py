"""Writing files so that an interruption (an exception, SIGKILL, a power loss) never leaves a half-written one
under the final name: write a temporary sibling, flush it to the disk, rename it over the target, and flush the
folder entry. The rename is atomic on POSIX file systems because the sibling is on the same one."""
from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO, Callable


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX; a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems do not support fsync on folders
        pass
    finally:
        os.close(fd)


def write_atomic_with(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call write(file) on a temporary sibling of path, then move it into place durably. On any error the
    temporary file is removed and `path` keeps what it held before."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    """Write text or bytes to path atomically and durably (see write_atomic_with)."""
    write_atomic_with(path, lambda f: f.write(data.encode() if isinstance(data, str) else data))
