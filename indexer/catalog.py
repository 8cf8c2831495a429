"""Catalog sources: a folder of images, or a JSONL / CSV manifest (id, uri, payload fields).

Local paths are confined to the catalog root (no '..' or absolute paths outside it). http(s) URIs are
refused unless allowed; when allowed they are fetched with a size cap and timeouts, and hosts that
resolve to private, loopback or link-local addresses are refused.
"""

from __future__ import annotations

import csv
import hashlib
import ipaddress
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from indexer.errors import IndexerError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
MAX_DOWNLOAD_BYTES = 20_000_000


@dataclass
class CatalogItem:
    item_id: str
    uri: str  # a path relative to the catalog root, or an http(s) URL
    payload: dict = field(default_factory=dict)


def read_catalog(source: str | Path) -> tuple[Path, list[CatalogItem]]:
    """(root, items) from a folder, a .jsonl or a .csv manifest. Ids must be unique."""
    src = Path(source)
    if src.is_dir():
        root = src.resolve()
        items = [CatalogItem(p.relative_to(root).as_posix(), p.relative_to(root).as_posix())
                 for p in sorted(root.rglob("*")) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    elif src.is_file() and src.suffix.lower() in (".jsonl", ".csv"):
        root = src.resolve().parent
        items = list(_jsonl(src) if src.suffix.lower() == ".jsonl" else _csv(src))
    else:
        raise IndexerError(f"catalog {src} is neither a folder of images nor a .jsonl/.csv manifest")
    seen: set[str] = set()
    for it in items:
        if it.item_id in seen:
            raise IndexerError(f"catalog {src}: item id {it.item_id!r} appears more than once")
        seen.add(it.item_id)
    return root, items


def _jsonl(path: Path) -> Iterator[CatalogItem]:
    with path.open() as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise IndexerError(f"{path}:{n}: malformed JSON ({e.msg})") from e
            yield _item(rec, path, n)


def _csv(path: Path) -> Iterator[CatalogItem]:
    with path.open(newline="") as f:
        for n, rec in enumerate(csv.DictReader(f), start=2):
            yield _item(rec, path, n)


def _item(rec, path: Path, line: int) -> CatalogItem:
    if not isinstance(rec, dict):
        raise IndexerError(f"{path}:{line}: expected an object with 'id' and 'uri'")
    for key in ("id", "uri"):
        if not rec.get(key):
            raise IndexerError(f"{path}:{line}: missing field {key!r}")
    payload = {k: v for k, v in rec.items() if k not in ("id", "uri")}
    if isinstance(rec.get("payload"), dict):
        payload = {**{k: v for k, v in payload.items() if k != "payload"}, **rec["payload"]}
    return CatalogItem(str(rec["id"]), str(rec["uri"]), payload)


def item_fingerprint(item: CatalogItem, content: bytes) -> str:
    """What decides whether an item changed: its image bytes and its payload."""
    h = hashlib.sha256(content)
    h.update(json.dumps(item.payload, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def fetch_bytes(item: CatalogItem, root: Path, allow_http: bool = False, max_bytes: int = MAX_DOWNLOAD_BYTES,
                timeout: float = 10.0) -> bytes:
    """The item's image bytes, under the rules above. Raises IndexerError with the reason."""
    parsed = urlparse(item.uri)
    if parsed.scheme in ("http", "https"):
        if not allow_http:
            raise IndexerError(f"{item.uri}: http(s) URIs are off; set DQE_CIR_ALLOW_HTTP=1 to fetch them")
        return _download(item.uri, max_bytes, timeout)
    if parsed.scheme not in ("", "file"):
        raise IndexerError(f"{item.uri}: unsupported URI scheme {parsed.scheme!r}")
    rel = parsed.path if parsed.scheme == "file" else item.uri
    path = (root / rel).resolve()
    if not path.is_relative_to(root.resolve()):
        raise IndexerError(f"{item.uri}: outside the catalog root {root}")
    if not path.is_file():
        raise IndexerError(f"{item.uri}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise IndexerError(f"{item.uri}: empty file")
    if size > max_bytes:
        raise IndexerError(f"{item.uri}: {size} bytes is over the {max_bytes}-byte limit")
    return path.read_bytes()


def _check_host(host: str) -> None:
    try:
        infos = socket.getaddrinfo(host, None)
    except socket.gaierror as e:
        raise IndexerError(f"cannot resolve {host}: {e}") from e
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_reserved or addr.is_multicast:
            raise IndexerError(f"{host} resolves to {addr}, a private or loopback address: refused")


def _download(url: str, max_bytes: int, timeout: float) -> bytes:
    import urllib.request

    host = urlparse(url).hostname or ""
    _check_host(host)
    req = urllib.request.Request(url, headers={"User-Agent": "dqe-cir-indexer"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 (scheme checked above)
            data = resp.read(max_bytes + 1)
    except OSError as e:
        raise IndexerError(f"{url}: download failed ({e})") from e
    if len(data) > max_bytes:
        raise IndexerError(f"{url}: larger than the {max_bytes}-byte limit")
    return data
