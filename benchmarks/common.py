"""What the benchmark scripts share: the machine they ran on, the command they record, and the one way
they write a page.

Every benchmark page (docs/benchmarks/*.md) is partly generated: a script writes only its own marked
section,

    <!-- NAME:start -->
    ... command, machine, tables ...
    <!-- NAME:end -->

and everything outside the markers (the title, the prose that reads the numbers, how to make the
inputs) is written by hand and never touched by a run (`write_section`).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def load_averages() -> str:
    """The 1, 5 and 15 minute load averages, as `uptime` prints them."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M")


def shown(path: str | Path) -> str:
    """A path as a page records it: relative to the repository when it is inside, else as given."""
    p = Path(path)
    if p.is_absolute():
        try:
            return str(p.relative_to(ROOT))
        except ValueError:
            return str(path)
    return str(path)


def _shown_arg(arg: str) -> str:
    if arg.startswith("-"):
        return arg
    if "=" in arg:  # NAME=PATH (learning.py phrasings) or KEY=JSON (--set)
        key, value = arg.split("=", 1)
        return f"{key}={shown(value)}" if os.path.isabs(value) else arg
    return shown(arg) if os.path.isabs(arg) else arg


def recorded_command(script: str, argv: list[str] | None = None) -> str:
    """The command a page records: `python benchmarks/SCRIPT ARGS` with the arguments this process was
    given (paths inside the repository made relative to it), so that running it again from the
    repository root rewrites the same section of the same page."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", f"benchmarks/{script}", *(shlex.quote(_shown_arg(a)) for a in args)])


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: str | Path, name: str, lines: list[str], title: str | None = None) -> str:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` of the page with `lines`,
    leaving everything outside the markers as it is. A page that does not exist is created with a
    `# title` line; a page without the section gets it appended. Markers that are not exactly one
    start before one end are an error (the page is left alone). Returns the section as written."""
    start, end = markers(name)
    body = "\n".join(lines).strip("\n")
    block = f"{start}\n\n{body}\n\n{end}"
    path = Path(path)
    text = path.read_text() if path.is_file() else f"# {title or name}\n"
    n_start, n_end = text.count(start), text.count(end)
    if n_start == 1 and n_end == 1 and text.index(start) < text.index(end):
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    elif n_start == 0 and n_end == 0:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        raise ValueError(f"{path}: section {name!r} has {n_start} start and {n_end} end markers "
                         "(want one of each, start first): mend the page by hand")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(block)
    print(f"wrote section {name!r} of {path}", flush=True)
    return block


def read_section(path: str | Path, name: str) -> str | None:
    """The text between the section's markers (None when the page or the section is missing)."""
    path = Path(path)
    if not path.is_file():
        return None
    start, end = markers(name)
    text = path.read_text()
    if start not in text or end not in text:
        return None
    return text.split(start, 1)[1].split(end, 1)[0].strip("\n")
