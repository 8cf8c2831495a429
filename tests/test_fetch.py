"""The URL fetcher (plugin.fetch) against a local HTTP server on 127.0.0.1, the only address these tests
ever contact. The resolver is patched so that public-looking names map to chosen addresses, and the
address rule lets exactly 127.0.0.1 pass as if it were public: every other private address keeps
being refused, which is what the redirect and rebinding tests check."""

import ipaddress
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from plugin import fetch
from plugin.fetch import FetchError, fetch_url

NAMES = {"images.example": "127.0.0.1", "internal.example": "10.0.0.5", "shared.example": "100.64.1.1",
         "metadata.example": "169.254.169.254"}


class Handler(BaseHTTPRequestHandler):
    routes: dict = {}
    hosts: list = []

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.hosts.append(self.headers.get("Host"))
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404)
        else:
            route(self)

    def log_message(self, *args):
        pass


def send(body: bytes, length: bool = True):
    def handle(h):
        h.send_response(200)
        if length:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return handle


def redirect(location: str):
    def handle(h):
        h.send_response(302)
        h.send_header("Location", location)
        h.end_headers()
    return handle


def declared(n: int):
    def handle(h):
        h.send_response(200)
        h.send_header("Content-Length", str(n))
        h.end_headers()
    return handle


def trickle(h):
    """Headers at once, then a byte every 0.2 s, until the client hangs up (at most 10 s)."""
    h.send_response(200)
    h.end_headers()
    try:
        for _ in range(50):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.2)
    except OSError:
        pass


@pytest.fixture()
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.routes, Handler.hosts = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd.server_address[1], Handler.routes
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def public_loopback(monkeypatch):
    """images.example -> 127.0.0.1, which counts as public; other names map to the addresses above."""
    calls = []

    def resolve(host, port):
        calls.append(host)
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            if host not in NAMES:
                raise FetchError(f"cannot resolve {host}: not in the test's table") from None
            return [ipaddress.ip_address(NAMES[host])]

    real = fetch.address_allowed
    monkeypatch.setattr(fetch, "resolve", resolve)
    monkeypatch.setattr(fetch, "address_allowed", lambda ip: str(ip) == "127.0.0.1" or real(ip))
    return calls


def test_fetches_through_the_checked_address_with_the_name_kept(server, public_loopback):
    port, routes = server
    routes["/a.png"] = send(b"image bytes")
    routes["/moved"] = redirect("/a.png")
    assert fetch_url(f"http://images.example:{port}/a.png") == b"image bytes"
    # images.example has no DNS entry here: the connection went to the address the check resolved
    assert Handler.hosts == [f"images.example:{port}"]
    assert fetch_url(f"http://images.example:{port}/moved") == b"image bytes"
    assert public_loopback == ["images.example"] * 3  # one look-up per hop, each hop checked


@pytest.mark.parametrize("location, reason", [
    ("http://internal.example/secret", "10.0.0.5: not a public address"),
    ("http://metadata.example/latest/meta-data/", "169.254.169.254: not a public address"),
    ("http://169.254.169.254/latest/meta-data/", "169.254.169.254: not a public address"),
    ("http://shared.example/x", "100.64.1.1: not a public address"),
    ("http://[::ffff:10.0.0.1]/x", "not a public address"),
    ("file:///etc/passwd", "only http and https"),
])
def test_redirects_inside_are_refused(server, public_loopback, location, reason):
    port, routes = server
    routes["/r"] = redirect(location)
    with pytest.raises(FetchError, match=reason):
        fetch_url(f"http://images.example:{port}/r")
    assert Handler.hosts == [f"images.example:{port}"]  # nothing else was contacted


def test_a_rebinding_resolver_cannot_steer_the_connection(server, monkeypatch):
    port, routes = server
    routes["/a.png"] = send(b"the checked host")
    answers = iter([["127.0.0.1"], ["169.254.169.254"], ["169.254.169.254"]])
    calls = []

    def rebinding(host, port):
        calls.append(host)
        return [ipaddress.ip_address(a) for a in next(answers)]

    monkeypatch.setattr(fetch, "resolve", rebinding)
    monkeypatch.setattr(fetch, "address_allowed", lambda ip: str(ip) == "127.0.0.1")
    assert fetch_url(f"http://rebind.example:{port}/a.png") == b"the checked host"
    assert calls == ["rebind.example"]  # resolved once: the second answer was never asked for


def test_size_cap_and_one_deadline(server, public_loopback):
    port, routes = server
    routes["/big"] = send(b"x" * 3000, length=False)
    routes["/declared"] = declared(5000)
    routes["/slow"] = trickle
    with pytest.raises(FetchError, match="larger than the 1000-byte limit"):
        fetch_url(f"http://images.example:{port}/big", max_bytes=1000)
    with pytest.raises(FetchError, match="5000 bytes is over the 1000-byte limit"):
        fetch_url(f"http://images.example:{port}/declared", max_bytes=1000)
    with pytest.raises(FetchError, match="not fetched within 1s"):
        fetch_url(f"http://images.example:{port}/slow", timeout=1.0)


def test_too_many_redirects_and_http_errors(server, public_loopback):
    port, routes = server
    routes["/loop"] = redirect("/loop")
    with pytest.raises(FetchError, match="more than 5 redirects"):
        fetch_url(f"http://images.example:{port}/loop")
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"http://images.example:{port}/missing")


def test_the_address_rule():
    allowed = fetch.address_allowed
    for text in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                 "100.127.255.254", "0.0.0.0", "224.0.1.1", "192.0.2.1", "::1", "fe80::1", "fc00::1",
                 "::ffff:127.0.0.1", "::ffff:10.0.0.1"):
        assert not allowed(ipaddress.ip_address(text)), text
    assert allowed(ipaddress.ip_address("8.8.8.8")) and allowed(ipaddress.ip_address("2a00:1450:4001::1"))


def test_literal_private_hosts_are_refused_without_a_patch():
    with pytest.raises(FetchError, match="not a public address"):
        fetch_url("http://127.0.0.1:9/a.png")  # port 9 (discard): refused before any connection


def test_an_http_catalog_and_an_http_item_ref_go_through_the_fetcher(server, public_loopback, tiny_bundle,
                                                                     synth_small, tmp_path):
    import json

    from qdrant_client import QdrantClient

    from encoder import Encoder
    from indexer.reindex_inprocess import SwapPolicy, index_catalog
    from plugin import CIRSearch, ItemRef, SearchError

    port, routes = server
    paths = sorted((synth_small / "val").glob("*.png"))[:4]
    lines = []
    for p in paths:
        routes[f"/img/{p.name}"] = send(p.read_bytes())
        lines.append(json.dumps({"id": p.stem, "uri": f"http://images.example:{port}/img/{p.name}"}))
    routes["/img/steered"] = redirect("http://internal.example/x")
    lines.append(json.dumps({"id": "steered", "uri": f"http://images.example:{port}/img/steered"}))
    (tmp_path / "m.jsonl").write_text("\n".join(lines))
    client, enc = QdrantClient(":memory:"), Encoder(tiny_bundle)
    report = index_catalog(client, enc, tmp_path / "m.jsonl", alias="c", allow_http=True, progress=False,
                           policy=SwapPolicy(max_failed=0.25))
    assert report.indexed == 4 and [f["item_id"] for f in report.failed] == ["steered"]
    assert "10.0.0.5: not a public address" in report.failed[0]["reason"]
    hits = CIRSearch(client, "c", encoder=enc, allow_http=True).query(ItemRef(paths[0].stem), "make it red", k=3)
    assert len(hits) == 3 and paths[0].stem not in [h.id for h in hits]
    with pytest.raises(SearchError, match=r"fetching http\(s\) is off"):
        CIRSearch(client, "c", encoder=enc).query(ItemRef(paths[0].stem), "make it red")
