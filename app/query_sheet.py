"""The demo's picture of a few composed queries: reference, text and top-5, as a PNG and an HTML page."""

from __future__ import annotations

import html
from pathlib import Path

from PIL import Image, ImageDraw

from cirdata.datasets import CIRRSplit


def query_sheet(data: CIRRSplit, tops: list[list[str]], out_dir: Path, n: int = 6,
                thumb: int = 96) -> tuple[Path, Path]:
    """A PNG and an HTML page: reference, text, top-5 (target framed in green)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = list(range(min(n, len(tops))))
    text_w = 260
    sheet = Image.new("RGB", (thumb * 6 + text_w + 40, (thumb + 30) * len(rows) + 10), "white")
    draw = ImageDraw.Draw(sheet)
    cells = []
    for r, qi in enumerate(rows):
        q = data.queries[qi]
        y = 10 + r * (thumb + 30)
        sheet.paste(Image.open(data.images[q.reference]).convert("RGB").resize((thumb, thumb)), (10, y))
        draw.text((10, y + thumb + 2), "reference", fill="black")
        draw_words(draw, (thumb + 20, y + 10), q.caption, text_w - 20)
        for j, name in enumerate(tops[qi][:5]):
            x = thumb + text_w + 30 + j * thumb
            sheet.paste(Image.open(data.images[name]).convert("RGB").resize((thumb - 6, thumb - 6)), (x + 3, y + 3))
            if name == q.target:
                draw.rectangle([x, y, x + thumb - 1, y + thumb - 1], outline=(0, 170, 0), width=3)
            draw.text((x + 3, y + thumb + 2), f"#{j + 1}", fill="black")
        cells.append((q, tops[qi][:5]))
    png = out_dir / "queries.png"
    sheet.save(png)
    page = ["<!doctype html><meta charset=utf-8><title>DQE-CIR demo queries</title>",
            "<style>img{width:96px;height:96px;margin:2px;image-rendering:pixelated}.t{outline:4px solid #0a0}"
            "td{vertical-align:middle;padding:4px}</style><h1>DQE-CIR demo: composed queries</h1><table>"]
    for q, top in cells:
        imgs = "".join(f'<img src="{data.images[n].as_uri()}" class="{"t" if n == q.target else ""}" '
                       f'title="{html.escape(n)}">' for n in top)
        page.append(f'<tr><td><img src="{data.images[q.reference].as_uri()}"></td><td>{html.escape(q.caption)}'
                    f"</td><td>{imgs}</td></tr>")
    page.append("</table><p>Green frame: the target.</p>")
    page_path = out_dir / "queries.html"
    page_path.write_text("\n".join(page))
    return png, page_path


WORD_GAP = 4  # px between words: the default font's own space is ~1 px wide ("to a" read as "toa")
LINE_HEIGHT = 14


def wrap_words(words: list[str], widths: list[float], width: float, gap: float = WORD_GAP) -> list[list[int]]:
    """Greedy line breaking by measured widths: the indices of the words on each line (a word wider than a
    line gets a line of its own)."""
    lines: list[list[int]] = [[]]
    used = 0.0
    for i, w in enumerate(widths):
        need = w if not lines[-1] else used + gap + w
        if lines[-1] and need > width:
            lines.append([i])
            used = w
        else:
            lines[-1].append(i)
            used = need
    return lines if lines[-1] else lines[:-1]


def draw_words(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, width: float) -> list[list[str]]:
    """Draw `text` word by word with a fixed gap, wrapped to `width` px; returns the lines drawn."""
    words = text.split()
    widths = [draw.textlength(w) for w in words]
    x0, y = xy
    drawn = []
    for line in wrap_words(words, widths, width):
        x = x0
        for i in line:
            draw.text((x, y), words[i], fill="black")
            x += widths[i] + WORD_GAP
        drawn.append([words[i] for i in line])
        y += LINE_HEIGHT
    return drawn
