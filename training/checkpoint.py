"""Checkpoints without pickle: one safetensors file per checkpoint.

    tensors   the model's weights under their state_dict names (fp16 in a shipped model) and, in a
              training run's last.safetensors, the trainer's tensors under "trainer/..." (optimizer
              moments, the TRNS sampler's arrays, the torch RNG state)
    metadata  "format": "dqe-cir-checkpoint/2", and three JSON texts: "model_config" (ModelConfig,
              with the whole transformers Blip2Config when the model came from a pretrained
              directory), "tokenizer" (the tokenizer.json) and "trainer" (config, step, epoch,
              history, RNG states; markers such as {"__tensor__": "trainer/optimizer.state.0.exp_avg"}
              name the tensors it holds)

Reading one parses JSON and tensors only; nothing in the file can run code. The old format (a
torch.save pickle) is refused with the command that converts it once (scripts/convert_checkpoint.py):
the conversion reads it with torch.load(weights_only=True), which refuses to run code too, and only
with trust_pickle=True falls back to full unpickling for files whose state held Python objects.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from encoder.text import TextTokenizer
from training.errors import TrainingError
from training.model import DQECIR, ModelConfig, legacy_state_dict

FORMAT = "dqe-cir-checkpoint/2"
LEGACY_FORMAT = "dqe-cir-checkpoint/1"
LAST = "last.safetensors"  # a training run's resumable checkpoint, in its --out folder
TRAINER = "trainer/"  # prefix of the trainer's tensors
CONVERT = "python scripts/convert_checkpoint.py"


# --- the trainer's state: JSON plus named tensors -------------------------------------------------
def pack(obj, tensors: dict[str, torch.Tensor], key: str = "state"):
    """A JSON-able copy of `obj` whose tensors and numpy arrays move into `tensors` (named by their path)."""
    if isinstance(obj, torch.Tensor):
        tensors[TRAINER + key] = obj.detach().cpu().contiguous()
        return {"__tensor__": TRAINER + key}
    if isinstance(obj, np.ndarray):
        tensors[TRAINER + key] = torch.from_numpy(np.ascontiguousarray(obj))
        return {"__ndarray__": TRAINER + key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: pack(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        return {"__items__": [[k, pack(v, tensors, f"{key}.{k}")] for k, v in obj.items()]}  # the optimizer's int keys
    if isinstance(obj, (list, tuple)):
        return [pack(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TrainingError(f"cannot store a {type(obj).__name__} in a checkpoint (at {key}); store arrays or numbers")


def unpack(obj, tensor):
    """The inverse of pack: `tensor(name)` returns a stored tensor (tuples come back as lists)."""
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensor(obj["__tensor__"])
        if "__ndarray__" in obj:
            return tensor(obj["__ndarray__"]).numpy()
        if "__items__" in obj:
            return {k: unpack(v, tensor) for k, v in obj["__items__"]}
        return {k: unpack(v, tensor) for k, v in obj.items()}
    if isinstance(obj, list):
        return [unpack(v, tensor) for v in obj]
    return obj


# --- save and load ---------------------------------------------------------------------------------
def save_checkpoint(path: str | Path, model: DQECIR, tok: TextTokenizer, trainer: dict | None = None,
                    half: bool = False) -> Path:
    """Write the checkpoint atomically (a temporary file, then a rename: never a half-written one).
    half: fp16 weights (a shipped model); `trainer`: the training state to resume from."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for k, v in model.state_dict().items():
        v = v.detach().cpu()
        v = v.half() if half and v.is_floating_point() else v
        if v.data_ptr() in seen:  # safetensors refuses tensors that share memory (tied weights)
            v = v.clone()
        seen.add(v.data_ptr())
        tensors[k] = v.contiguous()
    meta = {"format": FORMAT, "model_config": json.dumps(asdict(model.cfg)), "tokenizer": tok.to_str()}
    if trainer is not None:
        meta["trainer"] = json.dumps(pack(trainer, tensors))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return path


def file_kind(path: Path) -> str:
    """'safetensors', 'pickle' (torch.save's zip or a raw pickle) or 'unknown', from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors first: its first 8 bytes are the header length, whose low byte can be 0x80 (a pickle's
    # protocol marker); the '{' that opens the JSON header at byte 8 settles it.
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":
        return "pickle"
    return "unknown"


def _open(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    kind = file_kind(path)
    if kind == "pickle":
        raise TrainingError(f"{path} is an old pickle checkpoint (torch.save); checkpoints are safetensors now. "
                            f"Convert it once: {CONVERT} {path} (add --trust-pickle only for a file you trust)")
    try:
        if kind != "safetensors":
            raise ValueError("neither safetensors nor a torch.save file")
        f = safe_open(str(path), framework="pt")
        meta = f.metadata() or {}
    except Exception as e:  # safetensors raises several types for a damaged file
        raise TrainingError(f"{path}: not a readable checkpoint ({e})") from e
    if meta.get("format") != FORMAT:
        raise TrainingError(f"{path}: not a DQE-CIR checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    return f, meta


def read_meta(path: str | Path) -> dict:
    """The checkpoint's JSON only (no tensors): model_config, and what the trainer recorded (step,
    epoch, elapsed_s, total_steps, train_config, history) when it holds a training state."""
    _, meta = _open(path)
    out = json.loads(meta.get("trainer", "{}"))
    out["model_config"] = json.loads(meta["model_config"])
    return out


def load_checkpoint(path: str | Path) -> tuple[DQECIR, TextTokenizer, dict]:
    """(model in fp32, tokenizer, read_meta(path))."""
    f, meta = _open(path)
    cfg = saved_model_config(json.loads(meta["model_config"]))
    tok = TextTokenizer.from_str(meta["tokenizer"], cfg.max_text_len)
    model = DQECIR(cfg)
    state = legacy_state_dict({k: f.get_tensor(k) for k in f.keys() if not k.startswith(TRAINER)}, cfg)
    try:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    except RuntimeError as e:
        raise TrainingError(f"{path}: weights do not fit the model its config describes ({e})") from e
    return model, tok, read_meta(path)


def saved_model_config(mc: dict) -> ModelConfig:
    """A checkpoint's ModelConfig. One saved before sub-query normalisation existed has no
    "subquery_norm" key and was trained without it: it keeps scoring as it did (False)."""
    mc = {**mc, "pretrained": None}  # the weights are all in the checkpoint
    mc.setdefault("subquery_norm", False)
    return ModelConfig(**mc)


def load_trainer_state(path: str | Path) -> dict:
    """The training state to resume from, tensors included."""
    f, meta = _open(path)
    state = json.loads(meta.get("trainer", "{}"))
    if "optimizer" not in state:
        raise TrainingError(f"{path} holds weights only, no optimizer state to resume from (a shipped or converted "
                            "model): start a new run from it with --init")
    return unpack(state, f.get_tensor)


# --- the old format ----------------------------------------------------------------------------------
def convert_legacy(src: str | Path, dst: str | Path, trust_pickle: bool = False) -> Path:
    """Rewrite an old torch.save checkpoint as safetensors: weights (their dtype kept), config, tokenizer,
    and the numbers of its training state (train_config, step, epoch, history). Optimizer and sampler
    states are not carried over: the converted file starts runs (--init), it does not resume one."""
    src = Path(src)
    if not src.is_file():
        raise TrainingError(f"checkpoint not found: {src}")
    try:
        payload = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise TrainingError(f"{src} holds Python objects besides tensors, and unpickling them can run code "
                                f"({str(e).splitlines()[0]}). If you trust where it came from: {CONVERT} {src} "
                                "--trust-pickle") from e
        payload = torch.load(src, map_location="cpu", weights_only=False)
    except Exception as e:
        raise TrainingError(f"{src}: not a readable checkpoint ({e})") from e
    fmt = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
    if fmt != LEGACY_FORMAT:
        raise TrainingError(f"{src}: not an old DQE-CIR checkpoint (format {fmt!r}, expected {LEGACY_FORMAT!r})")
    cfg = saved_model_config(payload["model_config"])
    model = DQECIR(cfg)
    weights = legacy_state_dict(payload["model"], cfg)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in weights.items()})
    half = any(v.dtype == torch.float16 for v in weights.values())
    trainer = {k: payload[k] for k in ("train_config", "step", "epoch", "elapsed_s", "total_steps", "history")
               if k in payload}
    trainer["converted_from"] = src.name
    tok = TextTokenizer.from_str(payload["tokenizer"], cfg.max_text_len)
    return save_checkpoint(dst, model, tok, trainer, half=half)
