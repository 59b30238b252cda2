"""`agent-session-ids doctor [--json]`: checks the set-up without changing anything, one line per
check, each problem with the command that fixes it. Exits 1 when something is wrong."""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

from .. import PROBE_HOST
from ..rules import default_rules_dir, load_rules_dir
from ..shown import shown
from . import config as config_mod
from . import env as env_mod
from .proxy import Place, describe, port_holder, probe

# A TLS request through the proxy to the reserved host, as a Node runtime makes it: CONNECT, then
# TLS trusting what NODE_EXTRA_CA_CERTS adds; prints the status line it got.
NODE_CHECK = r"""
const net = require('net'), tls = require('tls');
const [port, host, proxy] = [Number(process.argv[1]), process.argv[2], process.argv[3]];
const s = net.connect(port, proxy, () => s.write(`CONNECT ${host}:443 HTTP/1.1\r\nHost: ${host}:443\r\n\r\n`));
s.once('data', (d) => {
  if (!/^HTTP\/1\.\d 200/.test(d.toString())) { console.log('CONNECT refused'); process.exit(1); }
  const t = tls.connect({socket: s, servername: host}, () => {
    t.write(`GET /status HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  });
  t.once('data', (a) => { console.log(a.toString().split('\r\n')[0]); process.exit(0); });
  t.on('error', (e) => { console.log(e.code || e.message); process.exit(1); });
});
s.on('error', (e) => { console.log(e.code || e.message); process.exit(1); });
"""


@dataclass
class Check:
    name: str
    state: str  # "ok", "warn" (worth knowing, not wrong) or "fail"
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.state.upper():<4} {self.name}: {self.detail}"
        return f"{text}\n     fix: {self.fix}" if self.fix else text


def tls_through_proxy(place: Place, cadata: str) -> str | None:
    """None when a TLS request to the reserved host through the proxy verifies with the roots in
    `cadata` (PEM), else why not."""
    try:
        context = ssl.create_default_context(cadata=cadata)
        with socket.create_connection((place.host, place.port), timeout=5) as raw:
            raw.sendall(f"CONNECT {PROBE_HOST}:443 HTTP/1.1\r\nHost: {PROBE_HOST}:443\r\n\r\n".encode())
            reply = raw.recv(4096)
            if not reply.startswith(b"HTTP/1.1 200") and not reply.startswith(b"HTTP/1.0 200"):
                return f"CONNECT refused ({reply[:40]!r})"
            with context.wrap_socket(raw, server_hostname=PROBE_HOST) as tls:
                tls.sendall(f"GET /status HTTP/1.1\r\nHost: {PROBE_HOST}\r\nConnection: close\r\n\r\n".encode())
                head = tls.recv(4096)
        return None if head.startswith(b"HTTP/1.1 200") else f"answered {head[:40]!r}"
    except ssl.SSLError as e:
        return f"TLS does not verify ({e.reason or e})"
    except OSError as e:
        return f"{e.strerror or e}"


def node_tls(place: Place, node: str) -> str | None:
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(place.ca_cert)}
    try:
        out = subprocess.run(
            [node, "-e", NODE_CHECK, str(place.port), PROBE_HOST, place.host],
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"node did not run ({e})"
    answer = out.stdout.strip()
    return None if out.returncode == 0 and answer.startswith("HTTP/1.1 200") else (answer or out.stderr.strip()[:200])


def writable(folder: Path) -> str | None:
    """Why the state folder cannot be written, or None. Only asked, nothing made (doctor changes
    nothing): the folder, or where it is not there yet, its nearest parent, where it will be made."""
    there = folder
    while not there.exists() and there != there.parent:
        there = there.parent
    if not there.is_dir():
        return f"{there} is not a folder"
    if not os.access(there, os.W_OK | os.X_OK):
        return f"{there}: this user cannot write there"
    return None


def writable_detail(folder: Path) -> str:
    return f"{folder} can be written" if folder.is_dir() else f"{folder} can be made (at the proxy's first start)"


def checks(place: Place, environ: dict[str, str]) -> list[Check]:
    out: list[Check] = []
    start = f"agent-session-ids proxy start --port {place.port}"
    status = probe(place)
    if status is not None:
        out.append(Check("proxy", "ok", describe(status, place)))
    else:
        held = port_holder(place.port, place.host)
        out.append(
            Check(
                "proxy",
                "fail",
                held or f"no proxy answers on {place.url}",
                f"stop that program, or {start.replace(str(place.port), str(place.port + 1))}" if held else start,
            )
        )
    if place.ca_cert.is_file():
        out.append(Check("CA", "ok", str(place.ca_cert)))
    else:
        out.append(Check("CA", "fail", f"no mitmproxy CA at {place.ca_cert}", start))
    if status is not None and place.ca_cert.is_file():
        restart = start.replace(" start", " restart")
        # the bundle `env` would write, checked in memory (doctor writes nothing); PEM is ASCII, the
        # non-ASCII in certifi's comments is dropped
        why = tls_through_proxy(place, env_mod.bundle_data(place).decode("ascii", "ignore"))
        out.append(
            Check(
                "TLS (Python, Rust, curl: SSL_CERT_FILE bundle)",
                "fail" if why else "ok",
                why or "a request through the proxy verifies",
                f"the proxy's CA is not {place.ca_cert}: {restart}" if why else "",
            )
        )
        node = shutil.which("node")
        if node:
            why = node_tls(place, node)
            out.append(
                Check(
                    "TLS (Node, Bun: NODE_EXTRA_CA_CERTS)",
                    "fail" if why else "ok",
                    why or "a request through the proxy verifies",
                    f"the proxy's CA is not {place.ca_cert}: {restart}" if why else "",
                )
            )
        else:
            out.append(Check("TLS (Node, Bun: NODE_EXTRA_CA_CERTS)", "warn", "no node on PATH to try it with"))
    told = (status or {}).get("hosts")
    hosts = {h for h in told if isinstance(h, str)} if isinstance(told, list) and told else set(_shipped_hosts())
    out.extend(proxy_variable_checks(place, environ, hosts))
    from . import agent_checks, supervisor

    out.extend(agent_checks.checks(environ))  # each agent on PATH runs --version, all at once
    state, detail = supervisor.summary(place, status is not None)
    if state:
        fix = "" if state == "ok" else f"agent-session-ids proxy restart --port {place.port}"
        out.append(Check("supervisor", state, detail, fix))
    out.append(Check("config file", *config_mod.doctor_line(config_mod.read(place.confdir))))
    why = writable(place.folder)
    out.append(
        Check(
            "state and ledger",
            "fail" if why else "ok",
            why or writable_detail(place.folder),
            f"make {place.folder} writable, or start with --confdir FOLDER" if why else "",
        )
    )
    return out


def proxy_variable_checks(place: Place, environ: dict[str, str], hosts: set[str]) -> list[Check]:
    """Each spelling of a proxy variable that is set must be right: curl, Python and Node's undici
    read the lower-case one first, Go the upper-case one."""
    out: list[Check] = []
    ours = (place.url, f"http://localhost:{place.port}")
    proxies = {name: environ[name] for name in ("HTTPS_PROXY", "https_proxy") if environ.get(name)}
    wrong = [f"{name} points at {shown(value)}" for name, value in proxies.items() if value.rstrip("/") not in ours]
    if not proxies:
        out.append(
            Check(
                "HTTPS_PROXY",
                "warn",
                "not set in this shell: agents started here go direct",
                'eval "$(agent-session-ids env)", or start agents with agent-session-ids launch AGENT',
            )
        )
    elif wrong:
        out.append(
            Check("HTTPS_PROXY", "fail", f"{'; '.join(wrong)}, not {place.url}", 'eval "$(agent-session-ids env)"')
        )
    else:
        out.append(Check("HTTPS_PROXY", "ok", ", ".join(f"{n}={shown(v)}" for n, v in proxies.items())))
    skipped = {name: _bypassed(hosts, environ.get(name) or "") for name in ("NO_PROXY", "no_proxy")}
    if any(skipped.values()):
        gateways = ", ".join(shown(h) for h in sorted(set().union(*skipped.values())))
        names = " and ".join(name for name, found in skipped.items() if found)
        out.append(
            Check(
                "NO_PROXY",
                "fail",
                f"the gateways {gateways} bypass the proxy (in {names})",
                f'remove them from {names}, or: eval "$(agent-session-ids env)" (NO_PROXY={env_mod.NO_PROXY})',
            )
        )
    else:
        out.append(Check("NO_PROXY", "ok", "no gateway of the rules bypasses the proxy"))
    # launch, run and env leave ALL_PROXY alone: HTTPS_PROXY and HTTP_PROXY win over it everywhere
    for name in ("ALL_PROXY", "all_proxy"):
        value = environ.get(name)
        if value and value.rstrip("/") not in ours:
            out.append(
                Check(
                    name,
                    "warn",
                    f"points at {shown(value)}: only programs that read no HTTPS_PROXY "
                    "use it, and their requests do not go through the proxy",
                )
            )
    return out


def _bypassed(hosts: set[str], no_proxy: str) -> list[str]:
    """The gateway hosts that a NO_PROXY value sends around the proxy."""
    bypass = [h.strip().lower() for h in no_proxy.split(",") if h.strip()]
    return sorted(
        {h for h in hosts for b in bypass if b == "*" or h == b.lstrip("*.") or h.endswith("." + b.lstrip("*."))}
    )


def _shipped_hosts() -> list[str]:
    try:
        return sorted({h for r in load_rules_dir(default_rules_dir()) for h in r.match.hosts if not h.startswith("*")})
    except Exception:  # only for the NO_PROXY check
        return []


def run(place: Place, as_json: bool) -> int:
    found = checks(place, dict(os.environ))
    if as_json:
        print(json.dumps([asdict(c) for c in found], indent=1))
    else:
        print("\n".join(c.line() for c in found))
    return 1 if any(c.state == "fail" for c in found) else 0
