"""An address as /proc/net/tcp{,6} prints it. A leaf module: `proxy status` and `env` use it
without importing the process table (resolution/proc)."""

from __future__ import annotations

import ipaddress
import sys


def hex_address(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bytes:
    """The address as /proc/net/tcp{,6} prints it: each 32-bit word in host byte order."""
    packed = ip.packed
    words = []
    for i in range(0, len(packed), 4):
        word = packed[i : i + 4]
        words.append((word[::-1] if sys.byteorder == "little" else word).hex().upper())
    return f"{''.join(words)}:{port:04X}".encode()
