"""Run a model bundle with onnxruntime: no torch.

    enc = Encoder("exports/demo-bundle")           # TensorRT > CUDA > CPU, whichever is available
    tokens = enc.encode_images(["a.jpg", pil_img])  # [N, Q, D]
    parts = enc.compose([ref_img], ["make it red"])  # q_base, q_attrs (one per attribute), weights
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from encoder.bundle import FILES, BundleSpec, composer_outputs, read_bundle
from encoder.errors import EncoderError
from encoder.fusion import fuse, resolve_weights
from encoder.preprocess import MAX_PIXELS, load_image, normalize, prepare_image
from encoder.text import TextTokenizer

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The requested providers that this onnxruntime build has (in order), or the best available."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise EncoderError(f"execution providers {missing} are not available in this onnxruntime build "
                               f"(available: {available}); install onnxruntime-gpu for CUDA/TensorRT")
        return list(requested)
    env = os.environ.get("DQE_CIR_PROVIDERS")
    if env:
        return choose_providers([p.strip() for p in env.split(",") if p.strip()])
    return [p for p in PROVIDER_PREFERENCE if p in available]


@dataclass
class ComposeOutput:
    q_base: np.ndarray  # [B, D], normalised
    q_attrs: np.ndarray  # [B, A, D]: one sub-query per attribute
    weights: np.ndarray  # [B, A]: the model's attribute weights
    attributes: tuple[str, ...]  # the A names, in column order

    def fused(self, override: dict | None = None) -> np.ndarray:
        return fuse(self.q_base, self.q_attrs, self.weights_used(override))

    def weights_used(self, override: dict | None = None) -> np.ndarray:
        """The weights the fusion uses: the model's, with the caller's values for the names given."""
        return resolve_weights(self.weights, override, self.attributes)


class Encoder:
    def __init__(self, bundle: str | Path, providers: Sequence[str] | None = None, threads: int | None = None,
                 max_batch: int = 32, verify: bool = True, max_pixels: int = MAX_PIXELS, jpeg_draft: bool = True):
        import onnxruntime as ort

        self.path = Path(bundle)
        self.spec: BundleSpec = read_bundle(self.path, verify=verify)
        self.providers = choose_providers(providers)
        self.max_batch = max(1, int(max_batch))
        self.max_pixels = max_pixels
        self.jpeg_draft = jpeg_draft
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        threads = threads or int(os.environ.get("DQE_CIR_THREADS", "0") or 0)
        if threads:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        try:
            self.image_session = ort.InferenceSession(str(self.path / FILES["image_encoder"]), opts,
                                                      providers=self.providers)
            self.composer_session = ort.InferenceSession(str(self.path / FILES["composer"]), opts,
                                                         providers=self.providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise EncoderError(f"{self.path}: onnxruntime could not load the bundle ({e})") from e
        self.tokenizer = TextTokenizer.from_file(self.path / FILES["tokenizer"], self.spec.max_text_len)
        self.use_io_binding = "CUDAExecutionProvider" in self.image_session.get_providers()

    @property
    def fingerprint(self) -> str:
        return self.spec.fingerprint

    # -- inputs ---------------------------------------------------------------------------------
    def preprocess(self, images: Sequence) -> np.ndarray:
        """Images (PIL, path, bytes, numpy) -> float32 [B, 3, H, W]."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            images = [images]
        if len(images) == 0:
            raise EncoderError("no images given")
        s = self.spec
        draft = s.image_size if self.jpeg_draft else None
        arr = np.stack([prepare_image(load_image(img, self.max_pixels, draft), s.image_size) for img in images])
        return normalize(arr, s.mean, s.std)

    # -- runs -----------------------------------------------------------------------------------
    def _run(self, session, outputs: Sequence[str], feeds: dict) -> list[np.ndarray]:
        if self.use_io_binding:
            binding = session.io_binding()
            for name, value in feeds.items():
                binding.bind_cpu_input(name, value)
            for name in outputs:
                binding.bind_output(name, "cpu")
            session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()
        return session.run(list(outputs), feeds)

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Already preprocessed float32 [B, 3, H, W] -> tokens [B, Q, D]."""
        out = [self._run(self.image_session, ["tokens"], {"pixel_values": pixels[s: s + self.max_batch]})[0]
               for s in range(0, len(pixels), self.max_batch)]
        return np.concatenate(out).astype(np.float32)

    def encode_images(self, images: Sequence) -> np.ndarray:
        """Catalog images -> per-token L2-normalised tokens [N, Q, D]."""
        if isinstance(images, (str, bytes, os.PathLike)) or not isinstance(images, Sequence):
            images = [images]
        out = [self.encode_pixels(self.preprocess(images[s: s + self.max_batch]))
               for s in range(0, len(images), self.max_batch)]
        return np.concatenate(out)

    def compose_pixels(self, pixels: np.ndarray, texts: Sequence[str]) -> ComposeOutput:
        if len(pixels) != len(texts):
            raise EncoderError(f"{len(pixels)} images but {len(texts)} texts; give one text per reference image")
        names = tuple(self.spec.attributes)
        outputs = composer_outputs(names)
        parts: list[list[np.ndarray]] = [[] for _ in outputs]
        for s in range(0, len(texts), self.max_batch):
            ids, mask = self.tokenizer(list(texts[s: s + self.max_batch]))
            got = self._run(self.composer_session, outputs,
                            {"pixel_values": pixels[s: s + self.max_batch], "input_ids": ids, "attention_mask": mask})
            for acc, g in zip(parts, got, strict=True):
                acc.append(g)
        flat = [np.concatenate(p).astype(np.float32) for p in parts]
        return ComposeOutput(flat[0], np.stack(flat[1:-1], axis=1), flat[-1], names)

    def compose(self, images: Sequence, texts: Sequence[str] | str) -> ComposeOutput:
        """Reference images + modification texts -> the composer's outputs (fusion is the caller's)."""
        if isinstance(texts, str):
            texts = [texts]
        return self.compose_pixels(self.preprocess(images), texts)
