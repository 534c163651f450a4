"""Reading a file a user named, safely: only a regular file, only up to a size cap, never blocking.

``open()`` on a FIFO blocks until a writer comes; ``/dev/zero`` never ends; a directory or a socket
is not a document. ``read_regular_file`` opens without blocking, checks what it opened (``fstat``
on the descriptor, so a path swapped after the check changes nothing) and reads at most the cap.
"""

from __future__ import annotations

import os
import stat


class UnsafeFileError(OSError):
    """The path is not a regular file, or is larger than the cap (``strerror`` says which)."""


def read_regular_file(path: str | os.PathLike, max_bytes: int) -> bytes:
    """Return the content of the regular file at ``path`` (at most ``max_bytes``).

    Raises UnsafeFileError when it is a FIFO, device, socket or directory, or is larger than
    ``max_bytes``; OSError (with ``strerror``) when it cannot be opened or read.
    """
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = ("a directory" if stat.S_ISDIR(info.st_mode) else "a FIFO" if stat.S_ISFIFO(info.st_mode)
                    else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                    else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
            raise UnsafeFileError(0, f"{kind}, not a regular file")
        if info.st_size > max_bytes:
            raise UnsafeFileError(0, f"larger than {max_bytes} bytes")
        chunks = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:  # it grew since fstat
            raise UnsafeFileError(0, f"larger than {max_bytes} bytes")
        return data
    finally:
        os.close(fd)
