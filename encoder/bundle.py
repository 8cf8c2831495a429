"""The model bundle: a folder that serving needs and nothing else (no torch).

    bundle.json         format version, fingerprint, dims, attributes, preprocessing, file hashes
    image_encoder.onnx  pixel_values[B,3,H,W] -> tokens[B,Q,D] (per-token L2-normalised)
    composer.onnx       pixel_values, input_ids[B,T], attention_mask[B,T] -> q_base, q_<attr> for each of the
                        bundle's attributes (in order), weights[B,A]
    tokenizer.json      the `tokenizers` tokenizer

The fingerprint is a hash of every file's hash plus the preprocessing settings: two bundles with the
same fingerprint embed images identically. Qdrant collections record it, and a bundle whose
fingerprint does not match its own files (edited, truncated, mixed up) is refused at load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from encoder.errors import EncoderError

FORMAT = "dqe-cir-bundle"
FORMAT_VERSION = 1
FILES = {"image_encoder": "image_encoder.onnx", "composer": "composer.onnx", "tokenizer": "tokenizer.json"}
# The attribute sub-queries of a bundle that names none (every bundle before the set was configurable),
# in the order of the composer's `weights` columns.
DEFAULT_ATTRIBUTES = ("color", "shape")


def composer_outputs(attributes) -> tuple[str, ...]:
    """The composer's output names for an attribute set: one definition that the exporter (torch side)
    and the runtime (serving side) both use."""
    return ("q_base", *(f"q_{a}" for a in attributes), "weights")


@dataclass
class BundleSpec:
    embed_dim: int
    num_query_tokens: int
    image_size: int
    mean: list[float]
    std: list[float]
    max_text_len: int
    opset: int
    precision: str = "fp32"  # fp32 | fp16 | int8 (training/export.py: the ONNX files' numbers)
    attributes: list[str] = field(default_factory=lambda: list(DEFAULT_ATTRIBUTES))
    attribute_weights: str = "sigmoid"  # how the model produces its weights (off | global | sigmoid | softmax)
    source: dict = field(default_factory=dict)  # where it came from: checkpoint, preset...
    format: str = FORMAT
    format_version: int = FORMAT_VERSION
    files: dict = field(default_factory=lambda: dict(FILES))
    file_sha256: dict = field(default_factory=dict)
    fingerprint: str = ""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _data_files(folder: Path, onnx_name: str) -> list[Path]:
    """An ONNX file plus its external-data files (large models), which share its stem."""
    stem = Path(onnx_name).stem
    return sorted(p for p in folder.iterdir() if p.name == onnx_name or (p.name.startswith(stem) and p.suffix
                                                                          in (".data", ".bin", ".weights")))


def compute_fingerprint(spec: BundleSpec) -> str:
    preprocessing = {"image_size": spec.image_size, "mean": spec.mean, "std": spec.std,
                     "max_text_len": spec.max_text_len, "precision": spec.precision}
    h = hashlib.sha256(json.dumps(preprocessing, sort_keys=True).encode())
    for name in sorted(spec.file_sha256):
        h.update(f"{name}:{spec.file_sha256[name]}".encode())
    return h.hexdigest()[:32]


def write_bundle_json(folder: str | Path, spec: BundleSpec) -> BundleSpec:
    """Hash the files already in `folder`, compute the fingerprint, write bundle.json."""
    folder = Path(folder)
    spec.file_sha256 = {}
    for key, name in spec.files.items():
        files = _data_files(folder, name) if name.endswith(".onnx") else [folder / name]
        for p in files:
            if not p.is_file():
                raise EncoderError(f"{p}: bundle file missing ({key})")
            spec.file_sha256[p.name] = sha256_file(p)
    spec.fingerprint = compute_fingerprint(spec)
    (folder / "bundle.json").write_text(json.dumps(asdict(spec), indent=1) + "\n")
    return spec


def read_bundle(folder: str | Path, verify: bool = True) -> BundleSpec:
    """Read and check a bundle: known format version, every file present, hashes and fingerprint match."""
    folder = Path(folder)
    meta = folder / "bundle.json"
    if not meta.is_file():
        raise EncoderError(f"{folder}: no bundle.json; is this a model bundle written by `dqe-cir export`?")
    try:
        raw = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise EncoderError(f"{meta}: malformed JSON ({e.msg})") from e
    if raw.get("format") != FORMAT:
        raise EncoderError(f"{meta}: not a DQE-CIR bundle (format {raw.get('format')!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise EncoderError(f"{meta}: bundle format version {raw.get('format_version')!r} is not supported by this "
                           f"release (it reads version {FORMAT_VERSION}); re-export the model or upgrade dqe-cir")
    try:
        spec = BundleSpec(**raw)
    except TypeError as e:
        raise EncoderError(f"{meta}: unexpected fields ({e})") from e
    for name in spec.file_sha256:
        if not (folder / name).is_file():
            raise EncoderError(f"{folder}: bundle file {name} is missing; copy the whole bundle folder")
    for key, name in spec.files.items():
        if not (folder / name).is_file():
            raise EncoderError(f"{folder}: bundle file {name} ({key}) is missing; copy the whole bundle folder")
    if verify:
        for name, digest in spec.file_sha256.items():
            if sha256_file(folder / name) != digest:
                raise EncoderError(f"{folder / name}: contents do not match the bundle's fingerprint (edited or "
                                   "corrupted); re-export the bundle")
        if compute_fingerprint(spec) != spec.fingerprint:
            raise EncoderError(f"{meta}: fingerprint {spec.fingerprint} does not match its files and settings")
    return spec
