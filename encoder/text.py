"""Text normalisation and tokenisation, shared by serving and training.

The tokenizer is a `tokenizers` tokenizer.json (BERT WordPiece for real BLIP-2, a small WordPiece
vocabulary for the synthetic demo). Texts longer than `max_length` tokens are truncated (the
[SEP] token is kept); an empty text is an error.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from encoder.errors import EncoderError


def normalize_text(text: str) -> str:
    """Collapse white space; refuse non-strings and empty texts."""
    if not isinstance(text, str):
        raise EncoderError(f"modification text must be a string, got {type(text).__name__}")
    clean = " ".join(text.split())
    if not clean:
        raise EncoderError("modification text is empty; say what to change, e.g. 'make it red'")
    return clean


class TextTokenizer:
    def __init__(self, tokenizer: Tokenizer, max_length: int):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.pad_id = tokenizer.token_to_id("[PAD]") or 0
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)

    @classmethod
    def from_file(cls, path: str | Path, max_length: int) -> TextTokenizer:
        path = Path(path)
        if not path.is_file():
            raise EncoderError(f"tokenizer file not found: {path}")
        return cls(Tokenizer.from_file(str(path)), max_length)

    @classmethod
    def from_str(cls, content: str, max_length: int) -> TextTokenizer:
        return cls(Tokenizer.from_str(content), max_length)

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def __call__(self, texts: list[str] | str) -> tuple[np.ndarray, np.ndarray]:
        """-> (input_ids, attention_mask), int64 [B, T], padded to the longest text of the batch."""
        if isinstance(texts, str):
            texts = [texts]
        encoded = self.tokenizer.encode_batch([normalize_text(t) for t in texts])
        length = max(len(e.ids) for e in encoded)
        ids = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask
