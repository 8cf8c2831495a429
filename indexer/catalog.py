"""Catalog sources: a folder of images, or a JSONL / CSV manifest (id, uri, payload fields).

Local paths are confined to the catalog root (no '..' or absolute paths outside it). http(s) URIs are
refused unless allowed; when allowed they go through plugin.fetch (public addresses only, every
redirect checked, one deadline, a size cap).

A catalog is read as a stream: `open_catalog` checks it once (fields, duplicate ids) and keeps only
its ids; `Catalog.chunks` reads it again, a chunk at a time. No image bytes are held beyond a chunk.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlparse

from indexer.errors import IndexerError
from plugin.fetch import MAX_BYTES, TIMEOUT, FetchError, fetch_url

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
T = TypeVar("T")
DEFAULT_CHUNK_SIZE = 32  # items per chunk: one task of a Celery job, one fed batch of an in-process one


@dataclass
class CatalogItem:
    item_id: str
    uri: str  # a path relative to the catalog root, or an http(s) URL
    payload: dict = field(default_factory=dict)


@dataclass
class Catalog:
    """A checked catalog: where it is read from, the folder its paths are relative to, and its ids."""

    source: Path
    root: Path
    ids: set[str]

    @property
    def count(self) -> int:
        return len(self.ids)

    def items(self) -> Iterator[CatalogItem]:
        return _stream(self.source, self.root)

    def chunks(self, size: int) -> Iterator[list[CatalogItem]]:
        """The items in order, `size` at a time (the same chunks on every pass)."""
        return chunked(self.items(), size)


def open_catalog(source: str | Path) -> Catalog:
    """A folder, a .jsonl or a .csv manifest, read through once to check it. Ids must be unique."""
    src = Path(source)
    if src.is_dir():
        root = src.resolve()
    elif src.is_file() and src.suffix.lower() in (".jsonl", ".csv"):
        root = src.resolve().parent
    else:
        raise IndexerError(f"catalog {src} is neither a folder of images nor a .jsonl/.csv manifest")
    ids: set[str] = set()
    for it in _stream(src, root):
        if it.item_id in ids:
            raise IndexerError(f"catalog {src}: item id {it.item_id!r} appears more than once")
        ids.add(it.item_id)
    return Catalog(src, root, ids)


def read_catalog(source: str | Path) -> tuple[Path, list[CatalogItem]]:
    """(root, items) from a folder, a .jsonl or a .csv manifest, all in memory (small catalogs, tools)."""
    catalog = open_catalog(source)
    return catalog.root, list(catalog.items())


def _stream(src: Path, root: Path) -> Iterator[CatalogItem]:
    if src.is_dir():
        for p in sorted(root.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
                rel = p.relative_to(root).as_posix()
                yield CatalogItem(rel, rel)
    elif src.suffix.lower() == ".jsonl":
        yield from _jsonl(src)
    else:
        yield from _csv(src)


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


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in order, `size` at a time (the last chunk may be shorter)."""
    if size < 1:
        raise IndexerError(f"chunk size must be at least 1, not {size}")
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def item_fingerprint(item: CatalogItem, content: bytes) -> str:
    """What decides whether an item changed: its image bytes and its payload."""
    h = hashlib.sha256(content)
    h.update(json.dumps(item.payload, sort_keys=True, default=str).encode())
    return h.hexdigest()[:32]


def fetch_bytes(item: CatalogItem, root: Path, allow_http: bool = False, max_bytes: int = MAX_BYTES,
                timeout: float = TIMEOUT) -> bytes:
    """The item's image bytes, under the rules above. Raises IndexerError with the reason."""
    parsed = urlparse(item.uri)
    if parsed.scheme in ("http", "https"):
        if not allow_http:
            raise IndexerError(f"{item.uri}: http(s) URIs are off; set DQE_CIR_ALLOW_HTTP=1 to fetch them")
        try:
            data = fetch_url(item.uri, max_bytes, timeout)
        except FetchError as e:
            raise IndexerError(str(e)) from e
        if not data:
            raise IndexerError(f"{item.uri}: empty body")
        return data
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
