"""Convert an old pickle checkpoint (torch.save, `.pt`) to the safetensors format, once.

    python scripts/convert_checkpoint.py OLD.pt [--out NEW.safetensors] [--trust-pickle]

The old file is read with torch.load(weights_only=True), which runs no code from it; a file whose
training state held Python objects (an old run's last.pt) needs --trust-pickle, which unpickles it
fully: pass it only for a file you made or trust. Weights (their dtype kept), model config,
tokenizer and the run's numbers are carried over; optimizer and sampler states are not (the result
starts runs with --init, it does not resume one).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from training.checkpoint import convert_legacy, load_checkpoint  # noqa: E402
from training.errors import TrainingError  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", help="the old .pt checkpoint")
    ap.add_argument("--out", help="the new file (default: OLD with the suffix .safetensors)")
    ap.add_argument("--trust-pickle", action="store_true", help="unpickle Python objects (only for trusted files)")
    args = ap.parse_args()
    out = Path(args.out) if args.out else Path(args.old).with_suffix(".safetensors")
    try:
        convert_legacy(args.old, out, trust_pickle=args.trust_pickle)
        model, _, meta = load_checkpoint(out)  # what users will load: check it reads back
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB, {n / 1e6:.2f}M parameters, step {meta.get('step')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
