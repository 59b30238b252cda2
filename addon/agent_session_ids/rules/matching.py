"""Which rules match a request. Indexed by host, so unrelated flows cost one dict lookup."""

from __future__ import annotations

from collections.abc import Sequence

from .model import Rule


def gateway_host(flow) -> str:
    """The host this request really goes to.

    In reverse mode (``--mode reverse:https://openrouter.ai``) that is the upstream, which mitmproxy
    puts in ``request.host``; the Host header names the proxy itself (``127.0.0.1:8080``) when
    ``keep_host_header`` is set. In every other mode the Host header is preferred, as
    ``pretty_host`` does: in transparent, local or WireGuard mode ``request.host`` is an IP address.
    """
    request = flow.request
    if flow.client_conn.proxy_mode.type_name == "reverse":
        return request.host
    return request.pretty_host


class RuleSet:
    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(r for r in rules if r.enabled)  # a rule that ships off is not used
        self._exact: dict[str, list[Rule]] = {}
        self._suffix: list[tuple[str, Rule]] = []  # ("." + domain, rule) for "*.domain"
        self._any_host: list[Rule] = []
        for rule in self.rules:
            if not rule.match.hosts:
                self._any_host.append(rule)
            for host in rule.match.hosts:
                if host.startswith("*."):
                    self._suffix.append((host[1:], rule))
                else:
                    self._exact.setdefault(host, []).append(rule)

    @property
    def hosts(self) -> list[str]:
        return sorted({h for r in self.rules for h in r.match.hosts} | ({"*"} if self._any_host else set()))

    def candidates(self, host: str) -> list[Rule]:
        """Rules whose host part matches; cheap, for the hot path."""
        host = host.lower().rstrip(".")
        found = self._exact.get(host)
        if not self._suffix and not self._any_host:
            return found or []
        out = list(found or [])
        out.extend(r for suffix, r in self._suffix if host.endswith(suffix) and r not in out)
        out.extend(r for r in self._any_host if r not in out)
        # keep file order, so that the first rule to set a field wins predictably
        order = {id(r): i for i, r in enumerate(self.rules)}
        out.sort(key=lambda r: order[id(r)])
        return out

    def matching(self, flow) -> list[Rule]:
        """The rules that match this HTTP flow, in file order."""
        request = flow.request
        rules = self.candidates(gateway_host(flow))
        if not rules:
            return rules
        path = request.path.split("?", 1)[0]
        method = request.method.upper()
        out = []
        for rule in rules:
            m = rule.match
            if m.methods and method not in m.methods:
                continue
            if m.path is not None and not m.path.search(path):
                continue
            if m.filter is not None and not m.filter(flow):
                continue
            out.append(rule)
        return out
