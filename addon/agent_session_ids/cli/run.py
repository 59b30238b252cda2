"""`agent-session-ids [--web] [mitmproxy options]`: mitmdump (or mitmweb) with the addon loaded,
listening on 127.0.0.1 unless --listen-host says otherwise. For an installed package (pip, pipx,
uv tool), where there is no checkout to point `-s` at."""

from __future__ import annotations

import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    web = "--web" in args
    if web:
        args.remove("--web")
    if not any(a == "--listen-host" or a.startswith("--listen-host=") for a in args):
        args = ["--listen-host", "127.0.0.1", *args]
    from mitmproxy.tools import main as tools

    run = tools.mitmweb if web else tools.mitmdump
    return run(["-s", str(Path(__file__).resolve().parent.parent / "script.py"), *args]) or 0


if __name__ == "__main__":
    sys.exit(main())
