"""An agent-like client process: it looks like pi to the addon, and continues a pi session.

Standard library only (it also runs under the system Python, as another user).

    python tests/support/fake_agent.py '<json config>'

It names itself (PR_SET_NAME, so /proc/<pid>/comm reads `name`, default "pi"), then sends
OpenRouter-shaped requests through the proxy whose `messages` continue a session: the first user
message is `first_user`, followed by `n_assistant` answered turns, then a new user turn. The
addon, reading this process's HOME and cwd from /proc, finds the session file with that first
user message and resolves the request to it.

Config keys (all optional but `proxy`):
  proxy         "http://127.0.0.1:PORT"
  ca            the proxy's CA file (HTTPS through CONNECT); without it, plain HTTP to the proxy
  name          process name to set ("pi")
  tag           sent as header x-fake-agent (to find the requests at the stand-in)
  first_user    the first user message's text; with fresh=true, a different one per request
  n_assistant   answered turns to send before the new user turn (1)
  requests      how many requests (1)
  connection    "keep" (one kept-alive connection), "new" (one per request), "mixed" (alternate)
  targets       list of URLs, used in turn (["https://openrouter.ai/api/v1/chat/completions"])
  headers       extra request headers {name: value}
  fresh         every request starts a new conversation (first user "<first_user> #i", no answers)
  tolerate      keep going after errors, retrying the same request up to `retries` times
  retries       (default 0)
  pause         seconds between requests (0)
  duration      with requests=0: keep sending until this many seconds have passed
  stop_file     with requests=0: keep sending until this file exists (instead of `duration`)
  timeout       client timeout per request (30)
  mode          "normal"; "exit-after-send" (send one request on plain HTTP, exit at once);
                "exec" (one request, then exec `exec_argv` with the socket as fd FAKE_SOCK_FD);
                "fork" (fork after connect; parent and child each send on the same socket)
  child         for exec/fork: the config the second sender uses (first_user, n_assistant,
                name, tag, cwd)
Prints one JSON line per request: {"tag", "seq", "status", "ms", "error"}, then {"done": ...}.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import socket
import ssl
import sys
import time
import urllib.parse

PR_SET_NAME = 15
DEFAULT_TARGET = "https://openrouter.ai/api/v1/chat/completions"


def set_name(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def messages(first_user: str, n_assistant: int, seq: int) -> list[dict]:
    """pi-like chat messages: first user turn, answered turns, then a new user turn."""
    out = [{"role": "user", "content": [{"type": "text", "text": first_user}]}]
    for i in range(n_assistant):
        out.append({"role": "assistant", "content": f"answer {i}"})
        out.append({"role": "user", "content": [{"type": "text", "text": f"follow-up {i}"}]})
    if n_assistant:
        out[-1] = {"role": "user", "content": [{"type": "text", "text": f"request {seq}"}]}
    return out


def body_bytes(first_user: str, n_assistant: int, seq: int) -> bytes:
    return json.dumps(
        {
            "model": "openai/gpt-4o-mini",
            "messages": messages(first_user, n_assistant, seq),
            "stream": False,
        }
    ).encode()


def _headers(cfg: dict, seq: int, host: str) -> dict:
    h = {
        "Content-Type": "application/json",
        "Authorization": "Bearer " + cfg.get("api_key", "sk-or-v1-fake-agent-key"),
        "x-fake-agent": str(cfg.get("tag", "")),
        "x-fake-seq": str(seq),
    }
    h.update(cfg.get("headers") or {})
    return h


class Client:
    """HTTPS through CONNECT (with `ca`) or plain HTTP to the proxy; kept-alive connections."""

    def __init__(self, cfg: dict) -> None:
        self.cfg = cfg
        p = urllib.parse.urlsplit(cfg["proxy"])
        self.proxy = (p.hostname, p.port)
        self.timeout = float(cfg.get("timeout", 30))
        self.ctx = ssl.create_default_context(cafile=cfg["ca"]) if cfg.get("ca") else None
        self.conns: dict[str, http.client.HTTPConnection] = {}

    def _conn(self, url: urllib.parse.SplitResult, keep: bool) -> http.client.HTTPConnection:
        key = f"{url.scheme}://{url.netloc}"
        if keep and key in self.conns:
            return self.conns[key]
        if url.scheme == "https" and self.ctx is not None:
            conn = http.client.HTTPSConnection(*self.proxy, timeout=self.timeout, context=self.ctx)
            conn.set_tunnel(url.hostname, url.port or 443)
        else:
            conn = http.client.HTTPConnection(*self.proxy, timeout=self.timeout)
        if keep:
            self.conns[key] = conn
        return conn

    def send(self, url: str, body: bytes, headers: dict, keep: bool) -> tuple[int, bytes]:
        u = urllib.parse.urlsplit(url)
        conn = self._conn(u, keep)
        target = u.path + (f"?{u.query}" if u.query else "")
        if u.scheme != "https" or self.ctx is None:
            target = url  # absolute-form to a plain HTTP proxy
        try:
            conn.request("POST", target, body=body, headers=headers)
            r = conn.getresponse()
            data = r.read()
            if r.will_close or not keep:
                conn.close()
                self.conns.pop(f"{u.scheme}://{u.netloc}", None)
            return r.status, data
        except BaseException:
            conn.close()
            self.conns.pop(f"{u.scheme}://{u.netloc}", None)
            raise


# --------------------------------------------------------------------------- pi session files


def pi_session_dir(home: str, cwd: str) -> str:
    """pi's per-cwd session folder: <home>/.pi/agent/sessions/--<cwd, '/' -> '-'>--."""
    rel = cwd[1:] if cwd.startswith(("/", "\\")) else cwd
    safe = "--" + rel.replace("/", "-").replace("\\", "-").replace(":", "-") + "--"
    return os.path.join(home, ".pi", "agent", "sessions", safe)


def write_pi_session(
    home: str,
    cwd: str,
    sid: str,
    first_user: str,
    n_assistant: int = 1,
    name: str | None = None,
    ts: str = "2026-05-06T12:00:00.000Z",
    folder: str | None = None,
) -> str:
    """A pi session file (format v3) as pi writes it; returns its path."""
    folder = folder or pi_session_dir(home, cwd)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"{ts.replace(':', '-').replace('.', '-')}_{sid}.jsonl")
    lines = [
        {"type": "session", "version": 3, "id": sid, "timestamp": ts, "cwd": cwd},
        {"type": "model_change", "id": "a1", "parentId": None, "provider": "openrouter", "modelId": "m"},
        {
            "type": "message",
            "id": "u0",
            "parentId": "a1",
            "message": {"role": "user", "content": [{"type": "text", "text": first_user}]},
        },
    ]
    for i in range(n_assistant):
        lines.append(
            {
                "type": "message",
                "id": f"a{i}x",
                "parentId": "u0",
                "message": {
                    "role": "assistant",
                    "content": [{"type": "text", "text": f"answer {i}"}],
                    "stopReason": "stop",
                },
            }
        )
        lines.append(
            {
                "type": "message",
                "id": f"u{i}x",
                "parentId": f"a{i}x",
                "message": {"role": "user", "content": [{"type": "text", "text": f"follow-up {i}"}]},
            }
        )
    if name is not None:
        lines.append({"type": "session_info", "id": "n1", "parentId": None, "name": name})
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines))
    return path


def emit(record: dict) -> None:
    sys.stdout.write(json.dumps(record) + "\n")
    sys.stdout.flush()


def run_normal(cfg: dict) -> int:
    client = Client(cfg)
    targets = cfg.get("targets") or [DEFAULT_TARGET]
    n = int(cfg.get("requests", 1))
    duration = float(cfg.get("duration", 0))
    connection = cfg.get("connection", "keep")
    retries = int(cfg.get("retries", 0))
    tolerate = bool(cfg.get("tolerate"))
    stop_file = cfg.get("stop_file")
    start = time.monotonic()
    seq = ok = failed = 0

    def more() -> bool:
        if n:
            return seq < n
        if stop_file:
            return not os.path.exists(stop_file)
        return time.monotonic() - start < duration

    while more():
        url = targets[seq % len(targets)]
        keep = connection == "keep" or (connection == "mixed" and seq % 2 == 0)
        if cfg.get("fresh"):
            body = body_bytes(f"{cfg.get('first_user', 'fresh')} #{seq}", 0, seq)
        else:
            body = body_bytes(cfg.get("first_user", "hello"), int(cfg.get("n_assistant", 1)), seq)
        headers = _headers(cfg, seq, urllib.parse.urlsplit(url).hostname)
        for attempt in range(retries + 1):
            t0 = time.monotonic()
            try:
                status, _ = client.send(url, body, headers, keep)
                emit(
                    {
                        "tag": cfg.get("tag"),
                        "seq": seq,
                        "status": status,
                        "ms": round((time.monotonic() - t0) * 1000, 2),
                        "error": None,
                        "attempt": attempt,
                    }
                )
                ok += status == 200
                failed += status != 200
                break
            except Exception as e:
                emit(
                    {
                        "tag": cfg.get("tag"),
                        "seq": seq,
                        "status": None,
                        "ms": round((time.monotonic() - t0) * 1000, 2),
                        "error": repr(e),
                        "attempt": attempt,
                    }
                )
                if not tolerate:
                    emit({"done": True, "ok": ok, "failed": failed + 1})
                    return 1
                if attempt == retries:
                    failed += 1
                time.sleep(0.05)
        seq += 1
        if cfg.get("pause"):
            time.sleep(float(cfg["pause"]))
    emit({"done": True, "ok": ok, "failed": failed})
    return 0 if failed == 0 else 1


# --------------------------------------------------------------------------- races (plain HTTP)


def raw_request(cfg: dict, seq: int) -> bytes:
    url = (cfg.get("targets") or ["http://openrouter.ai/api/v1/chat/completions"])[0]
    host = urllib.parse.urlsplit(url).netloc
    body = body_bytes(cfg.get("first_user", "hello"), int(cfg.get("n_assistant", 1)), seq)
    head = [f"POST {url} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in _headers(cfg, seq, host).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def read_response(sock: socket.socket) -> int:
    r = http.client.HTTPResponse(sock, method="POST")
    r.begin()
    r.read()
    return r.status


def proxy_socket(cfg: dict) -> socket.socket:
    p = urllib.parse.urlsplit(cfg["proxy"])
    return socket.create_connection((p.hostname, p.port), timeout=float(cfg.get("timeout", 30)))


def run_exit_after_send(cfg: dict) -> int:
    sock = proxy_socket(cfg)
    sock.sendall(raw_request(cfg, 0))
    os._exit(0)  # no response read, no close: the kernel closes the socket as the process goes


def run_exec(cfg: dict) -> int:
    """One request as this program, then exec into another program that goes on with the socket."""
    sock = proxy_socket(cfg)
    sock.sendall(raw_request(cfg, 0))
    emit({"tag": cfg.get("tag"), "seq": 0, "status": read_response(sock), "pid": os.getpid()})
    child = dict(cfg["child"], proxy=cfg["proxy"])
    fd = sock.detach()
    os.set_inheritable(fd, True)
    os.environ["FAKE_SOCK_FD"] = str(fd)
    if child.get("cwd"):
        os.chdir(child["cwd"])
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), json.dumps(dict(child, mode="on-fd"))])
    return 1  # not reached


def run_on_fd(cfg: dict) -> int:
    set_name(cfg.get("name", "python3"))
    sock = socket.socket(fileno=int(os.environ["FAKE_SOCK_FD"]))
    sock.settimeout(float(cfg.get("timeout", 30)))
    sock.sendall(raw_request(cfg, 1))
    emit({"tag": cfg.get("tag"), "seq": 1, "status": read_response(sock), "pid": os.getpid()})
    return 0


def run_fork(cfg: dict) -> int:
    """Connect, fork; the parent sends first, then the child, on the one shared socket."""
    sock = proxy_socket(cfg)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(w)
        os.read(r, 1)  # wait for the parent's request to be answered
        child = dict(cfg["child"], proxy=cfg["proxy"])
        if child.get("cwd"):
            os.chdir(child["cwd"])
        if child.get("name"):
            set_name(child["name"])
        try:
            sock.sendall(raw_request(child, 1))
            emit({"tag": child.get("tag"), "seq": 1, "status": read_response(sock), "pid": os.getpid()})
        finally:
            os._exit(0)
    os.close(r)
    sock.sendall(raw_request(cfg, 0))
    emit({"tag": cfg.get("tag"), "seq": 0, "status": read_response(sock), "pid": os.getpid()})
    os.write(w, b"x")
    os.waitpid(pid, 0)
    return 0


def main() -> int:
    cfg = json.loads(sys.argv[1])
    mode = cfg.get("mode", "normal")
    if mode != "on-fd":
        set_name(cfg.get("name", "pi"))
    if cfg.get("ready_file"):  # tell the parent the process name is set
        open(cfg["ready_file"], "w").close()
    return {
        "normal": run_normal,
        "exit-after-send": run_exit_after_send,
        "exec": run_exec,
        "on-fd": run_on_fd,
        "fork": run_fork,
    }[mode](cfg)


if __name__ == "__main__":
    sys.exit(main())
