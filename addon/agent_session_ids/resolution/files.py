"""Opening files that something else may have put in the way: never blocking on a FIFO or a device."""

from __future__ import annotations

import os
import stat


def open_regular(path: str) -> tuple[int, os.stat_result] | None:
    """An fd of a regular file and its stat, never blocking (FIFOs, devices and sockets give None)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            return None
    except OSError:
        os.close(fd)
        return None
    return fd, st


def read_regular(path: str, limit: int, offset: int = 0) -> bytes | None:
    """Up to `limit` bytes of a regular file from `offset`; None when there is none. Raises OSError when `path`
    names something else (a FIFO, a device, a folder), or cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"it is not a regular file ({stat.filemode(st.st_mode)})")
        out = bytearray()
        while len(out) < limit:
            piece = os.pread(fd, min(limit - len(out), 1 << 20), offset + len(out))
            if not piece:
                break
            out += piece
        return bytes(out)
    finally:
        os.close(fd)
