"""Fetch an image over http(s) without letting the URL steer the fetcher into the private network.

- http and https only, on every hop: redirects are followed here, one hop at a time (at most
  MAX_REDIRECTS), and each hop is checked like the first one (a redirect to file:// or to a private
  address is refused);
- the host is resolved once per hop and every address it resolves to must be globally routable
  (`ipaddress.is_global`, not multicast); the connection then goes to the address that was checked,
  with the name kept in the Host header and in TLS (SNI and the certificate check), so a DNS answer
  that changes between the check and the connection (rebinding) cannot redirect it;
- one deadline for the whole fetch, redirects included, and the size cap enforced while the body
  streams in (a Content-Length over the cap is refused before any of the body is read).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time

import httpx

from plugin.errors import BadQuery

MAX_BYTES = 20_000_000
TIMEOUT = 20.0  # seconds for the whole fetch
MAX_REDIRECTS = 5
REDIRECTS = (301, 302, 303, 307, 308)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_CLIENT: tuple[int, httpx.Client] | None = None


class FetchError(BadQuery):
    """A URL that was refused or could not be fetched; the message says which and why."""


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (the one DNS lookup of a hop)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise FetchError(f"cannot resolve {host}: {e}") from e
    return [ipaddress.ip_address(info[4][0]) for info in infos]


def address_allowed(ip: IPAddress) -> bool:
    """Globally routable unicast only: no private, loopback, link-local, shared (100.64/10), reserved,
    documentation or multicast address, also when wrapped in an IPv4-mapped IPv6 address."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


def checked_address(url: httpx.URL) -> IPAddress:
    """The address to connect to for `url`, after checking every address its host resolves to."""
    if url.scheme not in ("http", "https"):
        raise FetchError(f"{url}: only http and https URLs are fetched, not {url.scheme or 'a relative URL'}")
    host = url.raw_host.decode("ascii")
    if not host:
        raise FetchError(f"{url}: no host")
    addresses = resolve(host, url.port or (443 if url.scheme == "https" else 80))
    if not addresses:
        raise FetchError(f"{host} resolves to no address")
    refused = [str(a) for a in addresses if not address_allowed(a)]
    if refused:
        raise FetchError(f"{host} resolves to {', '.join(refused)}: not a public address, refused "
                         "(private, loopback, link-local and shared addresses are never fetched)")
    return addresses[0]


def _client() -> httpx.Client:
    """One client per process (it holds the TLS context). No keep-alive: every hop opens its own
    connection to the address checked for it; no proxies from the environment; redirects are ours."""
    global _CLIENT
    if _CLIENT is None or _CLIENT[0] != os.getpid():
        _CLIENT = (os.getpid(), httpx.Client(follow_redirects=False, trust_env=False,
                                             limits=httpx.Limits(max_keepalive_connections=0)))
    return _CLIENT[1]


def fetch_url(url: str, max_bytes: int = MAX_BYTES, timeout: float = TIMEOUT) -> bytes:
    """The body of `url` under the rules above. Raises FetchError with the reason."""
    deadline = time.monotonic() + timeout
    current = httpx.URL(url)
    for _ in range(MAX_REDIRECTS + 1):
        ip = checked_address(current)
        location = _get(current, ip, max_bytes, deadline, timeout)
        if isinstance(location, bytes):
            return location
        current = current.join(location)
    raise FetchError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _get(url: httpx.URL, ip: IPAddress, max_bytes: int, deadline: float, timeout: float) -> bytes | str:
    """One hop: the body, or the Location of a redirect."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise FetchError(f"{url}: not fetched within {timeout:g}s")
    extensions = {"sni_hostname": url.raw_host.decode("ascii")} if url.scheme == "https" else {}
    headers = {"Host": url.netloc.decode("ascii"), "User-Agent": "dqe-cir-indexer", "Accept-Encoding": "identity"}
    try:
        with _client().stream("GET", url.copy_with(host=str(ip)), headers=headers, extensions=extensions,
                              timeout=httpx.Timeout(remaining)) as resp:
            if resp.status_code in REDIRECTS:
                location = resp.headers.get("location")
                if not location:
                    raise FetchError(f"{url}: HTTP {resp.status_code} redirect without a Location")
                return location
            if resp.status_code != 200:
                raise FetchError(f"{url}: HTTP {resp.status_code}")
            declared = int(resp.headers.get("content-length") or 0)
            if declared > max_bytes:
                raise FetchError(f"{url}: {declared} bytes is over the {max_bytes}-byte limit")
            body = bytearray()
            for chunk in resp.iter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise FetchError(f"{url}: larger than the {max_bytes}-byte limit")
                if time.monotonic() > deadline:
                    raise FetchError(f"{url}: not fetched within {timeout:g}s")
            return bytes(body)
    except httpx.TimeoutException as e:
        raise FetchError(f"{url}: not fetched within {timeout:g}s ({type(e).__name__})") from e
    except httpx.HTTPError as e:
        raise FetchError(f"{url}: download failed ({type(e).__name__}: {e})") from e
