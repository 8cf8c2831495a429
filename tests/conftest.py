from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real annotation files not found at {path} (../shared/data beside the checkout)")
    return path


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory) -> Path:
    """The small synthetic benchmark, generated once per test session."""
    from cirdata.synth import generate

    out = tmp_path_factory.mktemp("synth_small")
    generate(out, size="small", seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_trained(synth_small, tmp_path_factory) -> Path:
    """A tiny model trained for a few dozen steps: embeddings that mean something, in seconds."""
    from training.train import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_run")
    train(TrainConfig(root=str(synth_small), out=str(out), model="tiny", max_steps=30, epochs=2, batch_size=32,
                      lr=1e-3, warmup_steps=5, img_set_negatives=1, eval_every=0, progress=False))
    return out / "last.safetensors"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_trained, tmp_path_factory) -> Path:
    from training.export import export_bundle
    from training.train import load_checkpoint

    model, tok, _ = load_checkpoint(tiny_trained)
    out = tmp_path_factory.mktemp("bundle")
    export_bundle(model, tok, out, log=lambda *_: None)
    return out


def make_bad_catalog(dest: Path, good_images: list[Path]) -> set[str]:
    """A catalog folder: copies of good images plus an empty, a corrupt, a truncated and a huge one.
    Returns the ids that must land in the failure report."""
    import io

    from PIL import Image

    dest.mkdir(parents=True)
    for p in good_images:
        (dest / p.name).write_bytes(p.read_bytes())
    (dest / "empty.png").write_bytes(b"")
    (dest / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (dest / "truncated.png").write_bytes(good_images[0].read_bytes()[:100])
    big = io.BytesIO()
    Image.new("RGB", (9000, 8000)).save(big, format="PNG")  # 72 MP: over the pixel limit
    (dest / "huge.png").write_bytes(big.getvalue())
    return {"empty.png", "corrupt.png", "truncated.png", "huge.png"}


ENGINES = ("edge", "local")  # the embedded engines: qdrant-edge (the default) and qdrant-client's local mode


@pytest.fixture(params=ENGINES)
def engine(request) -> str:
    return request.param


@pytest.fixture()
def new_client(engine, tmp_path):
    """A factory of fresh embedded clients on the engine under test (edge in a temporary folder, local mode in
    memory); the behaviour tests of the store, the searcher and the indexer run once on each."""
    from qdrant_client import QdrantClient

    from plugin.edge import EdgeClient

    made = []

    def make():
        client = QdrantClient(":memory:") if engine == "local" else EdgeClient(tmp_path / f"edge-{len(made)}")
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()
