"""A small BERT-style WordPiece tokenizer for models trained from scratch (tiny and demo configs).

Whole words for the synthetic world plus a set of common words, and single characters (with their
'##' continuations) so that any other word still tokenizes. Built from fixed lists, so it is the
same on every machine; real BLIP-2 checkpoints bring their own BERT tokenizer.json instead.
"""

from __future__ import annotations

import string

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

from cirdata.scenes import ATTRIBUTE_WORDS, COLORS, HELD_OUT_ONLY_WORDS, POSITIONS, SHAPES, SIZES, TEMPLATES

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
COMMON = (
    "a an the and or but with without of in on at to into for from by as is are be it its this that "
    "same instead now make made change turn replace swap add remove put take away delete get rid also "
    "include paint recolor reshape give color colour shape becomes should more less bigger smaller big "
    "left right top bottom center middle up down one two three all only other black white gray grey brown "
    "dark light bright shorter longer sleeves dress shirt"
).split()


def _words() -> list[str]:
    words: list[str] = []
    for w in COMMON + list(COLORS) + list(SHAPES) + list(SIZES) + [w for p in POSITIONS for w in p.split()]:
        words.append(w)
    for seen, held in TEMPLATES.values():
        for t in seen + held:
            words += [w for w in t.replace("{", " ").replace("}", " ").split() if w.isalpha()]
    return sorted(set(words))


def build_tokenizer() -> Tokenizer:
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab_list = SPECIALS + _words() + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(vocab_list))}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
    )
    return tok


def filler_words() -> list[str]:
    """What phrasing noise (scenes.noisy_phrasing) draws from: the vocabulary's whole words (the
    template placeholders' names "pos" and "size" among them) minus this world's attribute words and
    minus every word that only held-out phrasings use, so that training never sees one of those.
    Edit verbs and attribute-like words foreign to this world (black, bigger, center) stay in."""
    return [w for w in _words() if w not in ATTRIBUTE_WORDS and w not in HELD_OUT_ONLY_WORDS]
