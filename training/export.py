"""`dqe-cir export`: a checkpoint -> the model bundle (encoder/bundle.py), then a parity check of
both ONNX files against torch on a sample batch."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from encoder.bundle import COMPOSER_OUTPUTS, FILES, BundleSpec, write_bundle_json
from encoder.text import TextTokenizer
from training.errors import TrainingError
from training.model import DQECIR

FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 2e-2
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit: larger models keep weights beside the graph


class ImageEncoderGraph(nn.Module):
    def __init__(self, model: DQECIR):
        super().__init__()
        self.model = model

    def forward(self, pixel_values):
        return self.model.encode_image(pixel_values)


class ComposerGraph(nn.Module):
    def __init__(self, model: DQECIR):
        super().__init__()
        self.model = model

    def forward(self, pixel_values, input_ids, attention_mask):
        return self.model.compose(pixel_values, input_ids, attention_mask)


def _sample_inputs(model: DQECIR, tok: TextTokenizer, batch: int = 3):
    g = torch.Generator().manual_seed(0)
    size = model.cfg.image_size
    pixels = torch.randn(batch, 3, size, size, generator=g)
    texts = ["make the red circle blue", "same but green", "replace the yellow star with a small purple hexagon"]
    ids, mask = tok((texts * batch)[:batch])
    return pixels, torch.from_numpy(ids), torch.from_numpy(mask)


def export_bundle(model: DQECIR, tok: TextTokenizer, out: str | Path, opset: int = 18, fp16: bool = False,
                  source: dict | None = None, check: bool = True, log=print) -> dict:
    """Write the bundle; return the parity report {output: max abs diff} (raises on a failed check)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().float()
    pixels, ids, mask = _sample_inputs(model, tok)
    n_params = sum(p.numel() for p in model.parameters())
    external = n_params * 4 > EXTERNAL_DATA_BYTES
    t0 = time.time()
    with torch.no_grad():
        _export(ImageEncoderGraph(model), (pixels,), out / FILES["image_encoder"], ["pixel_values"], ["tokens"],
                {"pixel_values": {0: "batch"}, "tokens": {0: "batch"}}, opset, external)
        _export(ComposerGraph(model), (pixels, ids, mask), out / FILES["composer"],
                ["pixel_values", "input_ids", "attention_mask"], list(COMPOSER_OUTPUTS),
                {"pixel_values": {0: "batch"}, "input_ids": {0: "batch", 1: "text"},
                 "attention_mask": {0: "batch", 1: "text"}, **{o: {0: "batch"} for o in COMPOSER_OUTPUTS}},
                opset, external)
    if fp16:
        _convert_fp16(out)
    tok.tokenizer.save(str(out / FILES["tokenizer"]))
    cfg = model.cfg
    spec = BundleSpec(embed_dim=cfg.embed_dim, num_query_tokens=cfg.num_query_tokens, image_size=cfg.image_size,
                      mean=list(cfg.mean), std=list(cfg.std), max_text_len=cfg.max_text_len, opset=opset,
                      precision="fp16" if fp16 else "fp32", attribute_weights=cfg.attribute_weights,
                      source=source or {})
    spec = write_bundle_json(out, spec)
    log(f"[export] wrote {out} in {time.time() - t0:.1f}s (fingerprint {spec.fingerprint})")
    report = parity_report(model, tok, out) if check else {}
    tol = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    for name, diff in report.items():
        log(f"[export] parity {name:<8} max abs diff {diff:.2e} ({'ok' if diff <= tol else 'FAIL'}, tol {tol:g})")
    bad = {k: v for k, v in report.items() if v > tol}
    if bad:
        raise TrainingError(f"ONNX output differs from torch above {tol:g}: {bad}")
    return report


def _export(module, args, path: Path, inputs, outputs, dynamic_axes, opset, external) -> None:
    # The TorchScript-based exporter handles transformers' Q-Former with dynamic batch and text length;
    # the cross-attention mask is None inside compose() (ARCHITECTURE.md: it breaks both exporters).
    with warnings.catch_warnings():
        # The tracer warns about Python-level branches in transformers' code; the parity check that
        # follows every export is what tells whether the graph is right.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*advanced indexing.*")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    if external:
        import onnx

        m = onnx.load(str(path))
        onnx.save_model(m, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.stem + ".data")


def _convert_fp16(out: Path) -> None:
    """fp16 weights and activations for GPUs; inputs and outputs stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    for name in (FILES["image_encoder"], FILES["composer"]):
        m = onnx.load(str(out / name))
        onnx.save(convert_float_to_float16(m, keep_io_types=True), str(out / name))


@torch.no_grad()
def parity_report(model: DQECIR, tok: TextTokenizer, bundle: str | Path, batch_sizes=(1, 3), texts=None) -> dict:
    """Max abs difference between onnxruntime (CPU) and torch for every output over a few batches."""
    import onnxruntime as ort

    bundle = Path(bundle)
    opts = ort.SessionOptions()
    enc = ort.InferenceSession(str(bundle / FILES["image_encoder"]), opts, providers=["CPUExecutionProvider"])
    comp = ort.InferenceSession(str(bundle / FILES["composer"]), opts, providers=["CPUExecutionProvider"])
    texts = texts or ["make it red", "turn the blue square into a star", "add a small green cross top left",
                      "remove the pink hexagon and nothing else at all please"]
    report = {"tokens": 0.0, **{o: 0.0 for o in COMPOSER_OUTPUTS}}
    g = torch.Generator().manual_seed(1)
    size = model.cfg.image_size
    for b in batch_sizes:
        pixels = torch.randn(b, 3, size, size, generator=g)
        ids, mask = tok([texts[i % len(texts)] for i in range(b)])
        ref = model.encode_image(pixels).numpy()
        got = enc.run(["tokens"], {"pixel_values": pixels.numpy()})[0]
        report["tokens"] = max(report["tokens"], float(np.abs(ref - got).max()))
        ref_parts = [t.numpy() for t in model.compose(pixels, torch.from_numpy(ids), torch.from_numpy(mask))]
        got_parts = comp.run(COMPOSER_OUTPUTS, {"pixel_values": pixels.numpy(), "input_ids": ids,
                                                "attention_mask": mask})
        for name, r, o in zip(COMPOSER_OUTPUTS, ref_parts, got_parts, strict=True):
            report[name] = max(report[name], float(np.abs(r - o).max()))
    return report
