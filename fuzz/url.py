"""Target `url`: the webhook URL parser and IP classifier of bot/netguard.py (the SSRF guard).

Input: any bytes, read three ways. As a URL (UTF-8, invalid bytes kept as surrogates):
`check_url` may refuse with ValueError only; a URL it accepts must name the same host and port
that aiohttp (yarl) connects to, and never an IP literal of a class that is never allowed.
As an IP address (its text, and its first 4 / 16 bytes as numbers): `classify` must give one of
the known classes, the class of an IPv4 address wrapped in IPv6 (mapped, NAT64) must be the
IPv4 address's own, and `permits` must refuse every never-allowed class.
"""

from __future__ import annotations

import ipaddress

from yarl import URL

from bot import netguard

CLASSES = frozenset(
    {
        "public",
        "loopback",
        "private",
        "cgnat",
        "link-local",
        "metadata",
        "unspecified",
        "multicast",
        "reserved",
    }
)


def _url(text: str) -> None:
    try:
        target = netguard.check_url(text)
    except ValueError:
        return
    assert target.scheme in ("http", "https") and target.host
    assert target.port is None or 0 < target.port < 65536
    if target.ip is not None:
        assert netguard.classify(target.ip) not in netguard.NEVER
    try:
        url = URL(text)
    except ValueError:
        return  # aiohttp cannot send it either
    assert url.host is not None, f"netguard accepted host {target.host!r}, yarl sees none"
    if target.ip is not None:
        assert ipaddress.ip_address(url.host) == target.ip, (target.host, url.host)
    else:
        assert url.host.rstrip(".") == target.host.rstrip("."), (target.host, url.host)
    assert url.explicit_port == target.port, (target.port, url.explicit_port)


def _ip(ip: netguard.IPAddress) -> None:
    name = netguard.classify(ip)
    assert name in CLASSES, name
    for kind in ("executor", "callback"):
        for host in (str(ip), "example.com", "localhost"):
            if netguard.permits(kind, host, ip):
                assert name not in netguard.NEVER
    if isinstance(ip, ipaddress.IPv4Address):
        for wrapped in (f"::ffff:{ip}", f"64:ff9b::{ip}"):
            assert netguard.classify(ipaddress.IPv6Address(wrapped)) == name, (wrapped, name)


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    _url(text)
    try:
        literal = ipaddress.ip_address(text)
    except ValueError:
        pass
    else:
        _ip(literal)
    _ip(ipaddress.IPv4Address(data[:4].ljust(4, b"\0")))
    _ip(ipaddress.IPv6Address(data[:16].ljust(16, b"\0")))
