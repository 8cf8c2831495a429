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
    from training.synth import generate

    out = tmp_path_factory.mktemp("synth_small")
    generate(out, size="small", seed=0, progress=False)
    return out
