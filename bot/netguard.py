"""Where outgoing webhooks may connect (SSRF guard): a strict URL host parser, an IP classifier, and
the resolver and socket factory that enforce the same rules on the addresses actually connected to.

The policy, in order:
- Only http(s) URLs whose host is a DNS name, a canonical dotted-quad IPv4 or a bracketed IPv6;
  no credentials in the URL, no numeric tricks (`2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376`,
  `127.1`), no non-ASCII, whitespace or backslash in the authority.
- Never, anywhere: link-local (169.254/16, fe80::/10), cloud metadata endpoints, unspecified
  (0.0.0.0/8, ::) and multicast addresses, whether written in the URL or answered by DNS.
- An IP literal written by the operator (executor URL in the config file, a registered callback
  prefix, whose host a callback_url cannot change) is the operator's choice: loopback and private
  are allowed.
- A DNS name in an executor URL (operator config; executors are often internal) may resolve to
  private addresses. A DNS name in a callback URL (sent by an agent) must resolve to public
  addresses only, except `localhost` as registered, which may resolve to loopback only.
- Each delivery resolves the name once and connects only to an answer that passed (the "pinned IP"),
  so DNS that answers public at one moment and private the next is caught on the addresses used.
IPv4-mapped, IPv4-compatible, NAT64 (64:ff9b::/96), 6to4 and Teredo IPv6 addresses are classed by
the IPv4 address they carry.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from dataclasses import dataclass
from typing import Any, Literal

from aiohttp.abc import AbstractResolver, ResolveResult

Kind = Literal["executor", "callback"]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Never a webhook destination, whoever wrote the URL.
NEVER = frozenset({"link-local", "metadata", "unspecified", "multicast"})

# Known cloud metadata endpoints, classed apart so an error says what was hit.
_METADATA = frozenset(
    ipaddress.ip_address(text)
    for text in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, Oracle
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6 (inside the ULA range, which executors may reach)
        "100.100.100.200",  # Alibaba Cloud (inside CGNAT space, which executors may reach)
        "192.0.0.192",  # Oracle Cloud (legacy)
    )
)
_NETWORKS: tuple[tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, str], ...] = tuple(
    (ipaddress.ip_network(net), name)
    for net, name in (
        ("0.0.0.0/8", "unspecified"),
        ("127.0.0.0/8", "loopback"),
        ("10.0.0.0/8", "private"),
        ("172.16.0.0/12", "private"),
        ("192.168.0.0/16", "private"),
        ("100.64.0.0/10", "cgnat"),
        ("169.254.0.0/16", "link-local"),
        ("192.0.0.0/24", "reserved"),
        ("224.0.0.0/4", "multicast"),
        ("240.0.0.0/4", "reserved"),
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "reserved"),
        ("fc00::/7", "private"),
        ("ff00::/8", "multicast"),
    )
)
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_V4_TRANSLATED = ipaddress.ip_network("::ffff:0:0:0/96")

_PRINTABLE = re.compile(r"[!-~]*")  # printable ASCII without space
_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_NUMBER = re.compile(r"[0-9]+|0x[0-9a-f]*")


class Blocked(OSError):
    """A delivery refused before any byte was sent; aiohttp reports it as a connect failure."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EACCES, message)

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str  # lower-case; an IPv6 literal without its brackets
    ip: IPAddress | None  # set when the host is an IP literal
    port: int | None


def classify(ip: IPAddress) -> str:
    """public, loopback, private, cgnat, link-local, metadata, unspecified, multicast or reserved."""
    if ip in _METADATA:
        return "metadata"
    if isinstance(ip, ipaddress.IPv6Address):
        ip = ipaddress.IPv6Address(int(ip))  # drops a zone id (`%eth0`): it changes no class
        embedded = _embedded_v4(ip)
        if embedded is not None:
            return classify(embedded)
    for network, name in _NETWORKS:
        if ip.version == network.version and ip in network:
            return name
    return "public" if ip.is_global else "reserved"


def _embedded_v4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]  # the client's address, the one the relay delivers to
    low32 = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64 or ip in _V4_TRANSLATED:
        return low32
    if ip in _V4_COMPATIBLE and int(ip) > 1:  # :: and ::1 are themselves
        return low32
    return None


def parse_url(url: str) -> Target:
    """Split an http(s) URL and check its authority strictly; ValueError says what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"not an http(s) URL: {url!r}")
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if not authority:
        raise ValueError(f"no host: {url!r}")
    if not _PRINTABLE.fullmatch(authority) or "\\" in authority:
        raise ValueError(f"the host part has spaces, non-ASCII characters or a backslash: {url!r}")
    if "@" in authority:
        raise ValueError(f"credentials in the URL are not allowed: {url!r}")
    if authority.startswith("["):
        host, bracket, port_text = authority[1:].partition("]")
        if not bracket or (port_text and not port_text.startswith(":")):
            raise ValueError(f"malformed IPv6 host: {url!r}")
        try:
            ip: IPAddress | None = ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"not an IPv6 address: [{host}]") from None
        if "%" in host:
            raise ValueError(f"IPv6 zone ids are not allowed: [{host}]")
        port_text = port_text[1:]
    else:
        host, colon, port_text = authority.lower().partition(":")
        if colon and not port_text:
            raise ValueError(f"empty port: {url!r}")
        ip = _host_ip(host)
    if port_text and not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise ValueError(f"invalid port {port_text!r}: {url!r}")
    return Target(scheme.lower(), host.lower(), ip, int(port_text) if port_text else None)


def _host_ip(host: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address the host spells, None for a DNS name, ValueError for anything else."""
    # A host whose last label is a number is an IPv4 address to browsers and to inet_aton, which
    # read `2852039166`, `0xa9fea9fe`, `0251.0376.0251.0376` and `127.1` as addresses: only the
    # canonical dotted quad is accepted, so what is checked is what gets connected to.
    if _NUMBER.fullmatch(host.rsplit(".", 1)[-1]):
        try:
            return ipaddress.IPv4Address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a canonical dotted-quad IPv4 address") from None
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValueError(f"{host!r} is not a valid host name (write internationalized names as xn--)")
    return None


def check_url(url: str) -> Target:
    """The checks that need no DNS, for config, registration, intake and each delivery."""
    target = parse_url(url)
    if target.ip is not None and (name := classify(target.ip)) in NEVER:
        raise ValueError(f"{target.ip} is a {name} address: webhooks are never sent there")
    return target


def permits(kind: Kind, host: str, ip: IPAddress) -> bool:
    """May a webhook of `kind` whose URL names `host` connect to `ip`?"""
    name = classify(ip)
    if name in NEVER:
        return False
    if _is_literal(host) or kind == "executor":
        return True  # an operator's literal, or an operator-configured executor name
    if host.rstrip(".") == "localhost":
        return name == "loopback"
    return name == "public"


def _is_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class GuardedResolver(AbstractResolver):
    """Resolves with `inner`, then keeps only the answers `permits` allows: aiohttp connects to one
    of those (the pinned IP) and still sends the host name for TLS SNI and `Host`."""

    def __init__(self, kind: Kind, inner: AbstractResolver) -> None:
        self.kind = kind
        self.inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        answers = await self.inner.resolve(host, port, family)
        allowed = [a for a in answers if permits(self.kind, host, ipaddress.ip_address(a["host"]))]
        if not allowed:
            refused = ", ".join(f"{a['host']} ({classify(ipaddress.ip_address(a['host']))})" for a in answers)
            raise Blocked(f"blocked destination {host} -> {refused or 'no address'}")
        return allowed

    async def close(self) -> None:
        """Nothing: the inner resolver, shared by both kinds, is closed by whoever made it."""


def guarded_socket(addr_info: tuple[Any, ...]) -> socket.socket:
    """aiohttp's socket factory: the last check, on the very address about to be connected to.
    It covers IP literals too, which aiohttp connects to without asking the resolver."""
    family, kind, proto, _, address = addr_info
    ip = ipaddress.ip_address(address[0])
    if (name := classify(ip)) in NEVER:
        raise Blocked(f"blocked destination {ip} ({name})")
    return socket.socket(family=family, type=kind, proto=proto)
