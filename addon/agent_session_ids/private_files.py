"""The state folder's files are this user's alone: the folder 0700 and each file 0600, whoever makes
them first (the proxy, `proxy start`, `doctor`, `env`, `service install`), and no symlink placed there
is ever followed when writing. The log holds every request's URL, the ledger every session's label,
folder and cost."""

from __future__ import annotations

import os
import stat
from pathlib import Path

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def private_folder(path: str | os.PathLike) -> Path:
    """The folder, made if need be, and 0700 when it is this user's (one made 0755 by an older
    version is tightened). Raises OSError."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True, mode=FOLDER_MODE)
    st = os.stat(folder, follow_symlinks=False)
    if st.st_uid == os.getuid() and not os.path.islink(folder) and st.st_mode & 0o077:
        os.chmod(folder, FOLDER_MODE)
    return folder


def open_private(path: str | os.PathLike, flags: int = os.O_WRONLY | os.O_APPEND | os.O_CREAT) -> int:
    """An fd on a regular file of this user's, opened without following a symlink at `path`, made
    0600 if created and tightened to 0600 if it was looser. Raises OSError."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, FILE_MODE)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # a FIFO or device placed there
            raise OSError(f"{path} is not a regular file")
        if st.st_uid == os.getuid() and st.st_mode & 0o077:
            os.fchmod(fd, FILE_MODE)
        os.set_blocking(fd, True)
    except OSError:
        os.close(fd)
        raise
    return fd


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Replace the file at `path` by `data`, atomically: a new 0600 file renamed over it, so a
    symlink placed at `path` is replaced, never followed. Raises OSError."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


OWN_FOLDER = "agent-session-ids"


def folder_for(path: str | os.PathLike) -> None:
    """The folder of a file the addon writes, made 0700 if need be; tightened as `private_folder`
    does only when it is the addon's own (<confdir>/agent-session-ids): a folder the user named
    for a file (--set session_state_file=...) is left as it is. Raises OSError."""
    folder = os.path.dirname(os.fspath(path))
    if not folder:
        return
    if os.path.basename(folder) == OWN_FOLDER:
        private_folder(folder)
    else:
        os.makedirs(folder, mode=FOLDER_MODE, exist_ok=True)
