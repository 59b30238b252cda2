"""A corpus of odd requests, and raw clients that send them byte for byte through a proxy.

Plain functions, stdlib plus mitmproxy itself (h2 and its br/zstd codecs), so the
trust tests can import it without extra packages.

    raw = build_h1("POST", "/api/v1/chat/completions", "openrouter.ai", headers, body)
    status, body = send_h1(proxy_port, ca_file, "openrouter.ai", raw)
    status, body = send_h2(proxy_port, ca_file, "openrouter.ai", "POST", path, headers, body)

Every corpus request carries ``x-odd-case: <name>`` so its record can be found at the stand-in,
and the fake credentials of SECRETS (Authorization, x-api-key, a key in the URL query), so the
secrets test can scan for them.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import ssl
import zlib
from dataclasses import dataclass, field

SECRETS = {
    "authorization": "sk-or-v1-TRUSTTEST-authorization-9f3b2c1d",
    "x-api-key": "sk-ant-TRUSTTEST-xapikey-7e6a5b4c",
    "url_key": "TRUSTTEST-urlkey-0d1e2f3a",
}

CASE_HEADER = "x-odd-case"


# --------------------------------------------------------------------------- encodings


def encode(body: bytes, encoding: str | None) -> bytes:
    if not encoding:
        return body
    if encoding == "gzip":
        return gzip.compress(body, mtime=0)
    if encoding == "deflate":
        return zlib.compress(body)
    if encoding in ("br", "zstd"):
        # mitmproxy's own codecs: its zstd library differs between releases (zstandard, backports.zstd)
        from mitmproxy.net import encoding as codecs

        return codecs.encode(body, encoding)
    raise ValueError(encoding)


def decode(body: bytes, encoding: str | None) -> bytes:
    if not encoding:
        return body
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -15)
    if encoding in ("br", "zstd"):
        from mitmproxy.net import encoding as codecs

        return codecs.decode(body, encoding)
    raise ValueError(encoding)


# --------------------------------------------------------------------------- the corpus


@dataclass
class Odd:
    name: str
    body: bytes  # the decoded body (before content-encoding)
    encoding: str | None = None  # content-encoding to apply on the wire
    chunked: bool = False
    method: str = "POST"
    content_type: str | None = "application/json"
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    # What a rewrite may do to it when a rule matches: "insert" (only session_id added),
    # "untouched" (byte-identical), or "either" (fail-open: untouched, or only session_id added).
    on_rule: str = "insert"
    wire_body: bytes | None = None  # overrides encode(body, encoding) (a broken encoding)

    def wire(self) -> bytes:
        return self.wire_body if self.wire_body is not None else encode(self.body, self.encoding)


def _deep(depth: int) -> bytes:
    return b'{"model":"m","messages":[{"role":"user","content":"deep"}],"deep":' + b"[" * depth + b"]" * depth + b"}"


def corpus() -> list[Odd]:
    """The odd requests. Names are unique."""
    chat = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": 'héllo 🌍 \u2028 "q"'}]}
    base = json.dumps(chat, ensure_ascii=False).encode()
    unicode_body = (
        '{"model":"m","messages":[{"role":"user","content":"日本語 ✓ 🚀 \\ud83d\\ude80 \\u0000 \\"x\\""}],'
        '"ключ":"значение","emoji🔑":"\u200b"}'
    ).encode()
    numbers = (
        b'{"model":"m","big":123456789012345678901234567890123456789,"neg":-0.0,"inf":1e400,'
        b'"tiny":5e-324,"exp":1E+2,"float":0.10000000000000000555,"int":-0,'
        b'"messages":[{"role":"user","content":"numbers"}]}'
    )
    spaced = b'\r\n\t {  "model" :\t"m" ,\n "messages" : [ { "role" : "user" , "content" : "ws" } ]\n\n}  \r\n'
    out = [
        Odd("plain-json", base),
        Odd("unicode", unicode_body),
        Odd("numbers", numbers),
        Odd("whitespace", spaced),
        Odd("empty-object", b"{}"),
        Odd("nested-300", _deep(300)),
        Odd("dup-other-key", b'{"model":"a","model":"b","messages":[{"role":"user","content":"dup"}]}'),
        Odd("dup-session-id", b'{"session_id":"x","session_id":"y","messages":[]}', on_rule="untouched"),
        Odd("client-session-id", b'{"session_id":"client-chose-this","messages":[]}', on_rule="untouched"),
        Odd("nested-session-id", b'{"meta":{"session_id":"inner"},"messages":[]}'),
        Odd("lone-surrogate-escape", b'{"s":"\\ud800","messages":[]}'),
        # not JSON (RFC 8259 has no NaN or Infinity): passed as sent (issue 17, 6)
        Odd("nan-infinity", b'{"a":NaN,"b":-Infinity,"messages":[]}', on_rule="untouched"),
        Odd("nan-only", b'{"t":NaN,"messages":[{"role":"user","content":"n"}]}', on_rule="untouched"),
        Odd("infinity-in-list", b'{"messages":[{"role":"user","content":"i"}],"w":[1,Infinity]}', on_rule="untouched"),
        Odd("nan-in-message", b'{"messages":[{"role":"user","content":"m","score":NaN}]}', on_rule="untouched"),
        # a lone surrogate in the model: the ledger keeps the answer (issue 17, 7)
        Odd("lone-surrogate-model", b'{"model":"\\ud800x","messages":[{"role":"user","content":"s"}]}'),
        # 5000 digits: Python's int() refuses more than 4300 by default; fail open is acceptable
        Odd("int-5000-digits", b'{"n":' + b"7" * 5000 + b',"messages":[]}', on_rule="either"),
        Odd("array", b'[{"model":"m"}]', on_rule="untouched"),
        Odd("not-json", b"hello, this is not json \x00\x01\x02", content_type="text/plain", on_rule="untouched"),
        Odd("invalid-utf8", b'{"a":"\xff\xfe"}', on_rule="untouched"),
        Odd("utf8-bom", b'\xef\xbb\xbf{"a":1}', on_rule="untouched"),
        Odd("trailing-garbage", b'{"a":1} {"b":2}', on_rule="untouched"),
        Odd("truncated-json", b'{"model":"m","messages":[{"role":', on_rule="untouched"),
        Odd("empty-body", b"", on_rule="untouched"),
        Odd("empty-body-no-type", b"", content_type=None, on_rule="untouched"),
        Odd("binary-octets", bytes(range(256)) * 4, content_type="application/octet-stream", on_rule="untouched"),
        Odd(
            "large-512k", json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 512_000}]}).encode()
        ),
        Odd("chunked", base, chunked=True),
        Odd("chunked-empty", b"", chunked=True, on_rule="untouched"),
        Odd("put-method", base, method="PUT", on_rule="untouched"),  # the rule matches POST only
        Odd("get-with-body", base, method="GET", on_rule="untouched"),
        Odd(
            "odd-headers",
            base,
            extra_headers=[
                ("X-MiXeD-CaSe", "Value With  Spaces"),
                ("x-dup", "one"),
                ("x-dup", "two"),
                ("x-long", "L" * 8000),
                ("x-utf8", "caf\u00e9 \u2603"),
                ("x-empty", ""),
            ],
        ),
        Odd("gzip-broken", base, encoding="gzip", wire_body=b"\x1f\x8b this is not gzip", on_rule="untouched"),
        Odd("unknown-encoding", base, encoding="x-snappy-nope", wire_body=base, on_rule="untouched"),
    ]
    for enc in ("gzip", "deflate", "br", "zstd"):
        out.append(Odd(f"{enc}-json", base, encoding=enc))
        out.append(
            Odd(f"{enc}-not-json", b"plain text body", encoding=enc, content_type="text/plain", on_rule="untouched")
        )
    out.append(Odd("gzip-chunked", base, encoding="gzip", chunked=True))
    # compressed streams cut short: never taken for whole ones, nor "repaired" (issue 17, 5)
    for enc, cut in (("gzip", 6), ("gzip", 1), ("deflate", 4), ("br", 3), ("zstd", 3)):
        out.append(Odd(f"{enc}-cut-{cut}", base, encoding=enc, wire_body=encode(base, enc)[:-cut], on_rule="untouched"))
    # two gzip members, as gzip.decompress reads them
    out.append(
        Odd(
            "gzip-two-members",
            base,
            encoding="gzip",
            wire_body=gzip.compress(base[:20], mtime=0) + gzip.compress(base[20:], mtime=0),
            on_rule="either",
        )
    )
    return out


def request_headers(odd: Odd, host: str) -> list[tuple[str, str]]:
    """The headers a corpus request is sent with (HTTP/1.1; no Host, no framing headers)."""
    headers = [
        ("User-Agent", "odd-requests/1"),
        ("Authorization", "Bearer " + SECRETS["authorization"]),
        ("x-api-key", SECRETS["x-api-key"]),
        (CASE_HEADER, odd.name),
    ]
    if odd.content_type:
        headers.append(("Content-Type", odd.content_type))
    if odd.encoding:
        headers.append(("Content-Encoding", odd.encoding))
    return headers + list(odd.extra_headers)


def build_h1(
    method: str, target: str, host: str, headers: list[tuple[str, str]], body: bytes, chunked: bool = False
) -> bytes:
    """A raw HTTP/1.1 request (Content-Length, or chunked in 3 pieces)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        n = max(1, len(body) // 3)
        pieces = [body[i : i + n] for i in range(0, len(body), n)]
        payload = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8") + payload


# --------------------------------------------------------------------------- raw clients


def _connect_tunnel(proxy_port: int, host: str, port: int = 443, timeout: float = 30.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"proxy closed during CONNECT: {reply!r}")
        reply += chunk
    if b" 200" not in reply.split(b"\r\n", 1)[0]:
        raise ConnectionError(f"CONNECT refused: {reply!r}")
    return sock


def tls_context(ca_file: str, alpn: list[str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca_file))
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def send_h1(
    proxy_port: int, ca_file: str | None, host: str, raw: bytes, timeout: float = 30.0, tls: bool = True
) -> tuple[int, bytes]:
    """Send raw request bytes over HTTPS (CONNECT + TLS) or, with tls=False, as plain HTTP to the
    proxy (then `raw` must use an absolute-form target). Returns (status, response body)."""
    if tls:
        sock = _connect_tunnel(proxy_port, host, timeout=timeout)
        sock = tls_context(ca_file, ["http/1.1"]).wrap_socket(sock, server_hostname=host)
    else:
        sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        sock.sendall(raw)
        response = http.client.HTTPResponse(sock, method=raw.split(b" ", 1)[0].decode())
        response.begin()
        return response.status, response.read()
    finally:
        sock.close()


def send_h2(
    proxy_port: int,
    ca_file: str,
    host: str,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    body: bytes,
    timeout: float = 30.0,
) -> tuple[int, bytes, str]:
    """One HTTP/2 request (h2 over TLS through CONNECT). Returns (status, body, alpn)."""
    import h2.config
    import h2.connection
    import h2.events

    sock = _connect_tunnel(proxy_port, host, timeout=timeout)
    sock = tls_context(ca_file, ["h2"]).wrap_socket(sock, server_hostname=host)
    alpn = sock.selected_alpn_protocol() or ""
    if alpn != "h2":
        sock.close()
        return -1, b"", alpn
    try:
        conn = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=True, header_encoding=None))
        conn.initiate_connection()
        sid = conn.get_next_available_stream_id()
        hdrs = [(":method", method), (":path", path), (":scheme", "https"), (":authority", host)]
        hdrs += [(k.lower(), v) for k, v in headers]
        conn.send_headers(sid, [(k.encode(), v.encode()) for k, v in hdrs], end_stream=not body)
        sent = 0
        status, chunks, done = -1, [], False
        sock.sendall(conn.data_to_send())
        while not done:
            while sent < len(body):
                window = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                piece = body[sent : sent + window]
                sent += len(piece)
                conn.send_data(sid, piece, end_stream=sent >= len(body))
                sock.sendall(conn.data_to_send())
            data = sock.recv(65536)
            if not data:
                break
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    status = int(dict(event.headers)[b":status"])
                elif isinstance(event, h2.events.DataReceived):
                    chunks.append(event.data)
                    conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                    done = True
            sock.sendall(conn.data_to_send())
        return status, b"".join(chunks), alpn
    finally:
        sock.close()


# --------------------------------------------------------------------------- comparing


def inserted_member(before: bytes, after: bytes, key: str = "session_id") -> str:
    """The value of the one `"key":"value"` member inserted before the closing '}' of `before`;
    AssertionError if `after` differs from `before` in any other way."""
    close = before.rindex(b"}")
    head, tail = before[:close], before[close:]
    assert after.startswith(head) and after.endswith(tail), "bytes outside the insertion changed"
    middle = after[len(head) : len(after) - len(tail)]
    text = middle.decode("utf-8")
    needs_comma = head.rstrip(b" \t\r\n").endswith(b"{") is False
    prefix = ("," if needs_comma else "") + json.dumps(key) + ":"
    assert text.startswith(prefix), f"unexpected insertion {text[:200]!r}"
    value = json.loads(text[len(prefix) :])
    assert isinstance(value, str)
    return value
