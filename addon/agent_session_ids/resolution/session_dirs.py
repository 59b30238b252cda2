"""I/O adapter: a store of one folder per session, each with a JSON manifest (Cline).

    <root>/<id>/<id>.json     {"session_id", "cwd", "started_at", "prompt", ...}, written when the
                              session starts and rewritten as it goes (status, usage)

The manifest is read once it parses; what the resolver needs of it (id, start, cwd, the first
user turn) does not change after. A new session adds a folder, which changes the root's mtime:
the root is listed again only then, and a folder whose manifest was not there yet (or not whole)
is read again on the next request.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence

from ..jsontext import dotted
from .conversation import fingerprint
from .files import read_regular
from .formats import ManifestFormat
from .jsonl_file import parse_time
from .model import SessionFile

MANIFEST_MAX = 4 << 20  # a manifest holds the first prompt: a pasted file can make it large


class SessionDirs:
    def __init__(self) -> None:
        # root -> (its mtime when listed, folder name -> the manifest's snapshot, None until it parses)
        self._roots: dict[str, tuple[int, dict[str, SessionFile | None]]] = {}

    def candidates(
        self,
        root: str,
        fmt: ManifestFormat,
        ids: Sequence[str] = (),
        first_users: Sequence[str] = (),
        paths: Sequence[str] = (),
    ) -> list[SessionFile]:
        """The sessions below `root` with one of these ids, first user turns or manifest paths."""
        entries = self._entries(root, fmt)
        if not entries:
            return []
        out = []
        for name, f in entries.items():
            if f is None:
                f = entries[name] = read_manifest(os.path.join(root, name), name, fmt)
                if f is None:
                    continue
            if f.id in ids or (f.first_user is not None and f.first_user in first_users) or f.path in paths:
                out.append(f)
        return out

    def unread(self, root: str) -> list[str]:
        """The session folders below `root` whose manifest is not read yet (missing, not whole)."""
        listed = self._roots.get(root)
        return [os.path.join(root, name) for name, f in listed[1].items() if f is None] if listed else []

    def _entries(self, root: str, fmt: ManifestFormat) -> dict[str, SessionFile | None]:
        try:
            mtime = os.stat(root).st_mtime_ns
        except OSError:
            self._roots.pop(root, None)
            return {}
        listed = self._roots.get(root)
        if listed is None or listed[0] != mtime:
            known = listed[1] if listed else {}
            try:
                names = [e.name for e in os.scandir(root) if e.is_dir(follow_symlinks=False)]
            except OSError:
                names = []
            listed = self._roots[root] = (mtime, {n: known.get(n) for n in names})
        return listed[1]


def read_manifest(folder: str, name: str, fmt: ManifestFormat) -> SessionFile | None:
    """The snapshot of one session folder's manifest, or None while it is missing or not whole."""
    path = os.path.join(folder, fmt.file.format(id=name))
    try:
        st = os.stat(path)
        data = json.loads(read_regular(path, MANIFEST_MAX) or b"null")
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict):
        return None
    sid = dotted(data, fmt.id)
    if not isinstance(sid, str) or sid != name:
        return None
    prompt = dotted(data, fmt.prompt)
    cwd = dotted(data, fmt.cwd)
    first_user = fingerprint(unwrap(prompt, fmt)) if isinstance(prompt, str) else None
    return SessionFile(
        path=path,
        id=sid,
        created=parse_time(dotted(data, fmt.created)) or st.st_mtime,
        mtime=st.st_mtime,
        first_user=first_user,
        n_assistant=0,
        cwd=cwd if isinstance(cwd, str) else None,
    )


def unwrap(prompt: str, fmt: ManifestFormat) -> str:
    """The user's own text of a prompt the agent stored inside a wrapper (Cline's hub writes
    `<user_input mode="act">...</user_input>`; the model sees the text alone)."""
    for pattern in fmt.prompt_wrappers:
        m = re.fullmatch(pattern, prompt, re.S)
        if m:
            return m.group(1)
    return prompt
