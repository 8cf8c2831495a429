"""Serving-side model runtime: bundles, preprocessing, onnxruntime sessions. Never imports torch."""

from encoder.bundle import BundleSpec, read_bundle
from encoder.errors import EncoderError
from encoder.runtime import ComposeOutput, Encoder

__all__ = ["BundleSpec", "ComposeOutput", "Encoder", "EncoderError", "read_bundle"]
