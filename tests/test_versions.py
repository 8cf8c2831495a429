"""The life of the versions behind an alias, in-process: what may go live, what is kept, what rollback
picks, one job per alias, and the incremental run's safety rules."""

import json
import threading

import pytest

from encoder import Encoder
from encoder.bundle import BundleSpec
from indexer import IndexerError
from indexer.reindex_inprocess import index_catalog
from indexer.report import JobReport, SwapPolicy, parse_share, swap_problem
from indexer.versions import rollback, state, versions
from plugin import store
from tests.conftest import make_bad_catalog


@pytest.fixture()
def enc(tiny_bundle):
    return Encoder(tiny_bundle)


@pytest.fixture()
def images(synth_small):
    return sorted((synth_small / "val").glob("*.png"))


def folder(dest, paths):
    dest.mkdir(parents=True)
    for p in paths:
        (dest / p.name).write_bytes(p.read_bytes())
    return dest


def test_swap_rules_are_pure_and_say_why():
    r = JobReport("c", "c__1", "full", total=200, indexed=199, failed=[{"item_id": "x", "reason": "corrupt"}])
    assert swap_problem(r, stored=199, max_failed=0.01) is None
    r.failed *= 3
    assert "3 of 200 items failed (1.5%), more than --max-failed 1.0%" in swap_problem(r, 199, 0.01)
    assert swap_problem(r, 199, 0.02) is None
    assert "holds 198 points but 199" in swap_problem(r, 198, 0.5)
    assert swap_problem(JobReport("c", "c__1", "full"), 0, 1.0) == "the catalog is empty"
    r = JobReport("c", "c__1", "full", total=2, failed=[{"item_id": "a", "reason": "file not found"}] * 2,
                  lost_chunks=["chunk-00000 (a .. b, 2 items)"])
    assert swap_problem(r, 0, 1.0) == ("none of the 2 items was indexed (first failure: a: file not found); "
                                       "lost chunks: chunk-00000 (a .. b, 2 items)")
    assert parse_share("1%") == 0.01 and parse_share("0.05") == 0.05
    with pytest.raises(IndexerError, match="a percentage like 1%"):
        parse_share("lots")
    with pytest.raises(IndexerError, match="--keep must be at least 1"):
        SwapPolicy(keep=0)


def test_an_all_corrupt_catalog_never_goes_live(enc, images, tmp_path, new_client):
    client = new_client()
    good = index_catalog(client, enc, folder(tmp_path / "good", images[:4]), alias="c", progress=False)
    bad = tmp_path / "bad"
    make_bad_catalog(bad, images[:1])
    (bad / images[0].name).unlink()  # nothing readable is left
    with pytest.raises(IndexerError, match="none of the 4 items was indexed") as e:
        index_catalog(client, enc, bad, alias="c", progress=False)
    assert f"still points at {good.collection}" in str(e.value) and "was deleted" in str(e.value)
    report = e.value.report
    assert report.indexed == 0 and len(report.failed) == 4 and report.problem
    assert store.alias_target(client, "c") == good.collection and versions(client, "c") == [good.collection]
    (tmp_path / "empty").mkdir()
    with pytest.raises(IndexerError, match="the catalog is empty"):
        index_catalog(client, enc, tmp_path / "empty", alias="c", progress=False)
    assert versions(client, "c") == [good.collection]


def test_failed_share_and_max_failed(enc, images, tmp_path, new_client):
    cat = tmp_path / "cat"
    bad = make_bad_catalog(cat, images[:6])  # 6 good, 4 bad: 40% failed
    client = new_client()
    with pytest.raises(IndexerError, match=r"4 of 10 items failed \(40.0%\), more than --max-failed 1.0%"):
        index_catalog(client, enc, cat, alias="c", progress=False)
    assert store.alias_target(client, "c") is None and versions(client, "c") == []
    report = index_catalog(client, enc, cat, alias="c", progress=False, policy=SwapPolicy(max_failed=0.5))
    assert report.indexed == 6 and {f["item_id"] for f in report.failed} == bad
    assert state(client, report.collection) == store.COMPLETE


def test_keep_prunes_older_versions_and_rollback_skips_failed_ones(enc, images, tmp_path, new_client):
    client = new_client()
    good, bad = folder(tmp_path / "good", images[:3]), tmp_path / "bad"
    make_bad_catalog(bad, images[:1])
    a = index_catalog(client, enc, good, alias="c", progress=False).collection
    with pytest.raises(IndexerError, match="kept with state 'failed'"):
        index_catalog(client, enc, bad, alias="c", progress=False, policy=SwapPolicy(keep_failed=True))
    failed = versions(client, "c")[-1]
    assert state(client, failed) == store.FAILED and store.alias_target(client, "c") == a
    b = index_catalog(client, enc, good, alias="c", progress=False).collection
    assert versions(client, "c") == [a, failed, b]  # the failed build stays: --keep counts complete ones
    assert rollback(client, "c") == (b, a)  # past the failed build
    with pytest.raises(IndexerError, match="no older complete version"):
        rollback(client, "c")
    store.switch_alias(client, "c", b)
    c = index_catalog(client, enc, good, alias="c", progress=False)
    assert c.pruned == [a] and versions(client, "c") == [failed, b, c.collection]
    d = index_catalog(client, enc, good, alias="c", progress=False, policy=SwapPolicy(keep=1))
    assert d.pruned == [b, c.collection] and versions(client, "c") == [failed, d.collection]


def test_a_build_left_by_a_dead_job_is_never_a_rollback_target_and_is_pruned(enc, images, tmp_path, new_client):
    from indexer.versions import new_version

    client = new_client()
    good = folder(tmp_path / "good", images[:3])
    a = index_catalog(client, enc, good, alias="c", progress=False).collection
    dead = new_version(client, "c", enc.spec)  # a job that died half-way
    b = index_catalog(client, enc, good, alias="c", progress=False)
    assert dead in b.pruned and state(client, a) == store.COMPLETE
    assert rollback(client, "c") == (b.collection, a)


def test_payload_index_types_are_checked_before_anything_exists(tmp_path, capsys, new_client):
    spec = BundleSpec(embed_dim=4, num_query_tokens=2, image_size=32, mean=[0, 0, 0], std=[1, 1, 1],
                      max_text_len=8, opset=18, fingerprint="f" * 32)
    client = new_client()
    with pytest.raises(store.StoreError, match="unknown payload index type 'colour'"):
        store.create_collection(client, "x", spec, {"brand": "colour"})
    assert not client.collection_exists("x")
    assert store.parse_payload_indexes(["brand=keyword", " price = float "]) == {"brand": "keyword",
                                                                                   "price": "float"}
    from app.cli import main

    for spec_text in ("brand", "brand=colour", "=keyword"):
        code = main(["index", "--catalog", str(tmp_path), "--payload-index", spec_text, "--workers", "none",
                     "--qdrant-path", str(tmp_path / "q")])
        err = capsys.readouterr().err
        assert code == 2 and "expected FIELD=TYPE" in err and "Traceback" not in err, err


def test_one_job_per_alias_with_a_file_lock_in_local_mode(tiny_bundle, images, tmp_path, monkeypatch):
    from indexer.locks import alias_lock
    from indexer.reindex import run_index, run_rollback
    from indexer.settings import load_settings, with_overrides

    monkeypatch.delenv("QDRANT_URL", raising=False)
    settings = with_overrides(load_settings({}), str(tiny_bundle), str(tmp_path / "q"))
    good = folder(tmp_path / "good", images[:3])
    held, release = threading.Event(), threading.Event()

    def other_job():
        with alias_lock(settings, "c", "the-other-job"):
            held.set()
            release.wait(60)

    t = threading.Thread(target=other_job)
    t.start()
    try:
        assert held.wait(30)
        with pytest.raises(IndexerError, match="another index job is running on alias 'c' .*the-other-job"):
            run_index(settings, good, "c", progress=False)
        with pytest.raises(IndexerError, match="another index job"):
            run_rollback(settings, "c")
        report = run_index(settings, good, "other-alias", progress=False)  # another alias is free
        assert report.indexed == 3
    finally:
        release.set()
        t.join()
    assert run_index(settings, good, "c", progress=False).indexed == 3  # free again once released


def test_cli_exit_code_and_report_when_the_alias_stays(tiny_bundle, images, tmp_path, capsys):
    from app.cli import main

    bad = tmp_path / "bad"
    make_bad_catalog(bad, images[:1])
    common = ["--bundle", str(tiny_bundle), "--qdrant-path", str(tmp_path / "q"), "--workers", "none", "--quiet"]
    code = main(["index", "--catalog", str(bad), "--collection", "shop", "--json",
                 "--failures", str(tmp_path / "f.json"), *common])
    out, err = capsys.readouterr()
    assert code == 1 and "was not switched" in err
    report = json.loads(out)
    assert report["indexed"] == 1 and "4 of 5 items failed (80.0%)" in report["problem"]
    assert len(json.loads((tmp_path / "f.json").read_text())) == 4
    assert main(["index", "--catalog", str(bad), "--collection", "shop", "--max-failed", "80%", *common]) == 0


def test_incremental_fetches_each_item_once_and_refuses_an_empty_catalog(enc, images, tmp_path, monkeypatch,
                                                                         new_client):
    import indexer.pipeline as pipeline  # where the fed encoder fetches each item

    cat = folder(tmp_path / "cat", images[:5])
    client = new_client()
    index_catalog(client, enc, cat, alias="c", progress=False, chunk_size=2)
    (cat / images[0].name).write_bytes(images[6].read_bytes())
    fetched = []
    real = pipeline.fetch_bytes
    monkeypatch.setattr(pipeline, "fetch_bytes", lambda it, *a, **kw: fetched.append(it.item_id) or real(it, *a, **kw))
    report = index_catalog(client, enc, cat, alias="c", incremental=True, progress=False, chunk_size=2)
    assert (report.indexed, report.unchanged) == (1, 4)
    assert sorted(fetched) == sorted(p.name for p in images[:5])  # each item once, the changed one included
    for p in images[:5]:
        (cat / p.name).unlink()
    with pytest.raises(IndexerError, match="the catalog is empty.*Nothing was deleted"):
        index_catalog(client, enc, cat, alias="c", incremental=True, progress=False)
    assert store.count(client, "c") == 5


def test_a_payload_index_on_dqe_cirs_own_fields_is_refused(new_client):
    """--payload-index item_id=integer silently replaced the keyword index that token grouping and reference
    exclusion rely on (on a server). Refused, on the command line and at create_collection."""
    with pytest.raises(store.StoreError, match="item_id"):
        store.parse_payload_indexes(["item_id=integer"])
    with pytest.raises(store.StoreError, match="token_index"):
        store.parse_payload_indexes(["brand=keyword", "token_index=keyword"])
    client = new_client()
    spec = BundleSpec(embed_dim=4, num_query_tokens=2, image_size=32, mean=[0, 0, 0], std=[1, 1, 1],
                      max_text_len=8, opset=18, fingerprint="f" * 32)
    with pytest.raises(store.StoreError, match="dqe-cir's own"):
        store.create_collection(client, "x", spec, payload_indexes={"item_id": "integer"})
    assert not client.collection_exists("x")


def test_a_reindex_keeps_the_alias_design_and_settings_unless_told(tiny_bundle, synth_small, caplog, new_client):
    """A full re-index without --design moved a token or pooled alias to multivector and dropped its
    design_params; --incremental --design X was silently ignored."""
    import logging

    from plugin.designs import design_from_meta

    catalog = synth_small / "val"
    client, enc = new_client(), Encoder(tiny_bundle)

    def live():
        return design_from_meta(store.collection_info(client, store.alias_target(client, "c")))

    index_catalog(client, enc, catalog, alias="c", progress=False, design="token", design_settings={"m": 8})
    assert (live().name, live().m, live().hnsw_ef) == ("token", 8, 128)
    with caplog.at_level(logging.WARNING, logger="indexer.versions"):
        index_catalog(client, enc, catalog, alias="c", progress=False)
    assert (live().name, live().m) == ("token", 8) and not caplog.records
    with pytest.raises(IndexerError, match="full re-index"):
        index_catalog(client, enc, catalog, alias="c", progress=False, incremental=True, design="multivector")
    with pytest.raises(IndexerError, match="full re-index"):
        index_catalog(client, enc, catalog, alias="c", progress=False, incremental=True,
                      design_settings={"hnsw_ef": 64})
    index_catalog(client, enc, catalog, alias="c", progress=False, incremental=True, design="token")  # the same: fine
    with caplog.at_level(logging.WARNING, logger="indexer.versions"):
        index_catalog(client, enc, catalog, alias="c", progress=False, design="pooled")
    assert live().name == "pooled" and "pooled" in caplog.text and "token (m=8" in caplog.text
