"""doctor's agent checks: each known agent on the PATH runs `--version` as the shell would start it
(under the PATH's runtime: its `#!/usr/bin/env node` finds the PATH's node), all at once so that
doctor stays fast. An agent that does not run fails with the last meaningful line of its error
(pi 1.6.0 under Node 20: `SyntaxError: ... 'enableCompileCache'`), one that runs shows its version."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor

from ..resolution import agents
from ..shown import shown
from .doctor import Check

VERSION_TIMEOUT_S = 30.0
# lines of an error that say nothing of its cause: stack frames, Node's version footer, caret marks
NOISE = re.compile(r"^\s*(at\s|Node\.js v\d|\^+\s*$|~+\s*$|$)")
# the runtime each kind of agent runs under, and how it tells its version
RUNTIME_VERSION = {"node": ["node", "--version"], "bun": ["bun", "--version"]}


def meaningful(text: str) -> str:
    """The last line of an error that is not noise (its message, under a stack), shown."""
    lines = [x.strip() for x in text.splitlines() if not NOISE.match(x)]
    return shown(lines[-1], 240) if lines else "no output"


def version_of(argv: list[str], environ: dict[str, str]) -> tuple[bool | None, str]:
    """(True, what it printed) when `argv` runs; (False, its error) when it fails; (None, why)
    when it did not answer in time (a busy machine is no proof of a broken agent)."""
    try:
        done = subprocess.run(
            argv,
            env=environ,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=VERSION_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        return None, f"`{' '.join(argv[1:])}` did not end within {VERSION_TIMEOUT_S:.0f} s"
    except OSError as e:
        return False, shown(e.strerror or str(e), 200)
    if done.returncode != 0:
        return False, f"exit code {done.returncode}: {meaningful(done.stderr or done.stdout)}"
    first = next((x.strip() for x in done.stdout.splitlines() if x.strip()), "")
    return True, shown(first, 80) or "(printed nothing)"


def _runtime(profile: agents.AgentProfile, environ: dict[str, str]) -> str:
    argv = RUNTIME_VERSION.get(profile.runtime)
    found = shutil.which(argv[0], path=environ.get("PATH")) if argv else None
    if not argv or not found:
        return ""
    ran, text = version_of([found, *argv[1:]], environ)
    return f" ({argv[0]} on PATH: {text})" if ran else ""


def _check(profile: agents.AgentProfile, command: str, environ: dict[str, str]) -> Check:
    ran, text = version_of([command, "--version"], environ)
    roots = [r for r in profile.store.root_paths(environ) if os.path.isdir(r)] if profile.store else []
    readable = [r for r in roots if os.access(r, os.R_OK | os.X_OK)]
    name = f"agent {profile.name}"
    if ran is False:
        return Check(
            name,
            "fail",
            f"{command} --version does not run{_runtime(profile, environ)}: {text}",
            f"run `{command} --version` to see the whole error; an old runtime first on PATH is a usual cause",
        )
    if roots and not readable:
        return Check(name, "fail", f"{command} ({text})", f"let this user read {', '.join(roots)}")
    state = "ok" if ran else "warn"
    return Check(name, state, f"{command} {text}; sessions in {', '.join(readable) or 'no store yet'}")


def checks(environ: dict[str, str]) -> list[Check]:
    """One check per known agent on the PATH, in PROFILES' order; their `--version` run at once."""
    found = [
        (profile, command)
        for profile in agents.PROFILES
        if profile.command and (command := shutil.which(profile.command, path=environ.get("PATH")))
    ]
    if not found:
        return []
    with ThreadPoolExecutor(max_workers=len(found)) as pool:
        return list(pool.map(lambda pair: _check(pair[0], pair[1], environ), found))
