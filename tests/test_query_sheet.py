"""The demo's picture of a few queries (app/query_sheet.py)."""

import numpy as np


def test_query_sheet_text_keeps_a_visible_gap_between_words():
    """queries.png drew "to a" as "toa": the default font's space is about a pixel. Words are drawn one by one
    with a fixed gap, wrapped by their measured widths."""
    from PIL import Image, ImageDraw

    from app.query_sheet import WORD_GAP, draw_words, wrap_words

    assert wrap_words(["aa", "bb", "cc"], [10, 10, 10], 24, gap=4) == [[0, 1], [2]]
    assert wrap_words(["wide"], [50], 20) == [[0]]
    img = Image.new("L", (200, 20), 255)
    lines = draw_words(ImageDraw.Draw(img), (0, 0), "to a", 200)
    assert lines == [["to", "a"]]
    ink = (np.asarray(img) < 128).any(axis=0)
    cols = np.flatnonzero(ink)
    gaps = np.diff(cols)
    assert gaps.max() >= WORD_GAP  # a blank run between "to" and "a"
