import json

import pytest

from indexer.catalog import CatalogItem, fetch_bytes, read_catalog
from indexer.errors import IndexerError


def test_folder_jsonl_and_csv_catalogs(tmp_path):
    (tmp_path / "img" / "sub").mkdir(parents=True)
    (tmp_path / "img" / "a.png").write_bytes(b"x")
    (tmp_path / "img" / "sub" / "b.jpg").write_bytes(b"y")
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    root, items = read_catalog(tmp_path / "img")
    assert [i.item_id for i in items] == ["a.png", "sub/b.jpg"]
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "p1", "uri": "img/a.png", "color": "red"}) + "\n\n")
    _, items = read_catalog(tmp_path / "m.jsonl")
    assert items[0].payload == {"color": "red"}
    (tmp_path / "m.csv").write_text("id,uri,brand\np1,img/a.png,acme\n")
    _, items = read_catalog(tmp_path / "m.csv")
    assert items[0].payload == {"brand": "acme"}


def test_bad_manifests(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"id": "p1"}\n')
    with pytest.raises(IndexerError, match=r"m\.jsonl:1: missing field 'uri'"):
        read_catalog(tmp_path / "m.jsonl")
    (tmp_path / "d.jsonl").write_text('{"id": "p1", "uri": "a"}\n{"id": "p1", "uri": "b"}\n')
    with pytest.raises(IndexerError, match="appears more than once"):
        read_catalog(tmp_path / "d.jsonl")
    with pytest.raises(IndexerError, match="neither a folder"):
        read_catalog(tmp_path / "nothing.txt")


def test_paths_confined_to_root_and_http_rules(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"x")
    with pytest.raises(IndexerError, match="outside the catalog root"):
        fetch_bytes(CatalogItem("a", "../secret.png"), root)
    with pytest.raises(IndexerError, match="outside the catalog root"):
        fetch_bytes(CatalogItem("a", str(tmp_path / "secret.png")), root)
    with pytest.raises(IndexerError, match="http\\(s\\) URIs are off"):
        fetch_bytes(CatalogItem("a", "https://example.com/a.jpg"), root)
    with pytest.raises(IndexerError, match="not a public address"):
        fetch_bytes(CatalogItem("a", "http://127.0.0.1:6379/a.jpg"), root, allow_http=True)
    with pytest.raises(IndexerError, match="unsupported URI scheme"):
        fetch_bytes(CatalogItem("a", "ftp://example.com/a.jpg"), root)
