"""Checkpoints: model, optimizer and EMA teacher as safetensors, plus a small `checkpoint.json`.

A checkpoint folder holds
    model.safetensors      the student's state dict
    optimizer.safetensors  the optimizer's tensors, flattened as "state.<param index>.<name>" (optional)
    ema.safetensors        the EMA teacher's state dict, same keys as the student's (optional)
    checkpoint.json        size, text_dim, trainable, epoch, step, round, the resolved run config, the
                           optimizer's param groups and non-tensor state, the EMA decay
A local checkpoint is written into a staging folder beside the target and renamed into place, so a reader
never sees half a checkpoint; on an object store (`s3://...`, through `prvos_core.storage`) each file is one
object and `checkpoint.json`, which every reader opens first, is uploaded last. Loading is strict (every key, every shape) and, as in nanoGPT, the architecture comes from
`checkpoint.json`. Problems a user can cause raise CheckpointError in one line.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from safetensors.torch import load as tensors_from_bytes

from prvos_core import storage
from prvos_core.errors import CheckpointError, StorageError, first_line
from prvos_core.model.backbones import load_state_dict_strict
from prvos_core.model.builders import build_model
from prvos_core.model.ema import EmaTeacher
from prvos_core.model.urvos import URVOS

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
EMA_FILE = "ema.safetensors"
META_FILE = "checkpoint.json"
REQUIRED_META = ("epoch", "step", "round")
RESERVED_META = ("format", "size", "text_dim", "trainable", "spec", "ema_decay", "optimizer")


@dataclass(frozen=True)
class Checkpoint:
    """A loaded checkpoint: the student, its EMA teacher (None if not saved) and checkpoint.json's content."""

    model: URVOS
    ema: EmaTeacher | None
    meta: dict[str, Any]


def save_checkpoint(
    path_dir: str | Path,
    model: URVOS,
    optimizer: torch.optim.Optimizer | None = None,
    ema: EmaTeacher | None = None,
    *,
    meta: Mapping[str, Any],
) -> Path | str:
    """Write a checkpoint folder at `path_dir` (replacing one already there) and return its path (the URI as
    given for an object store).

    meta: "epoch", "step", "round" (ints), optionally "config" (the resolved run config as plain data) and
    any other JSON-serialisable entries, all kept in checkpoint.json.
    """
    missing = [key for key in REQUIRED_META if key not in meta]
    reserved = sorted(set(meta) & set(RESERVED_META))
    if missing or reserved:
        raise ValueError(f"checkpoint meta lacks {missing} or sets keys save_checkpoint writes itself: {reserved}")
    record: dict[str, Any] = {
        "config": {},
        **meta,
        "format": FORMAT_VERSION,
        "size": model.spec.size,
        "text_dim": model.spec.text_dim,
        "trainable": model.spec.trainable,
        "spec": model.spec.to_dict(),
        "ema_decay": None if ema is None else ema.decay,
        "optimizer": None,
    }
    files = {MODEL_FILE: _cpu_tensors(model.state_dict())}
    if ema is not None:
        files[EMA_FILE] = _cpu_tensors(ema.state_dict())
    if optimizer is not None:
        files[OPTIMIZER_FILE], record["optimizer"] = _flatten_optimizer(optimizer.state_dict())
    try:
        text = json.dumps(record, indent=2)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint meta must be JSON-serialisable: {error}") from None
    if not storage.is_local(str(path_dir)):
        with tempfile.TemporaryDirectory() as folder:
            _write_files(Path(folder), files, text, path_dir)
            storage.upload_folder(folder, str(path_dir), last=META_FILE)
        return path_dir
    try:
        with storage.staged_folder(path_dir) as staging:
            _write_files(staging, files, text, path_dir)
    except OSError as error:
        raise StorageError(
            f"cannot write checkpoint {path_dir} ({error.strerror}); check the folder and free space"
        ) from None
    return Path(path_dir)


def _write_files(folder: Path, files: dict[str, dict[str, torch.Tensor]], meta_text: str, target) -> None:
    try:
        for name, tensors in files.items():
            safetensors.torch.save_file(tensors, folder / name)
        (folder / META_FILE).write_text(meta_text, encoding="utf-8")
    except OSError as error:
        raise StorageError(f"cannot write checkpoint {target} ({error.strerror}); check free space") from None


def load_checkpoint(
    path_dir: str | Path,
    *,
    model: URVOS | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    ema: EmaTeacher | None = None,
    device: torch.device | str = "cpu",
) -> Checkpoint:
    """Load a checkpoint strictly.

    model None: build it from checkpoint.json (size, text_dim, trainable) with a random backbone, then load
    the weights; a given model is loaded into as it is. optimizer: restored too (needs `model`, whose
    parameters it must hold). ema: loaded into; None: built from the model and loaded when the checkpoint
    has one. Everything ends on `device`. A missing, corrupt or mismatching file raises CheckpointError.
    """
    if optimizer is not None and model is None:
        raise ValueError("restoring an optimizer needs the model its parameters belong to")
    meta = read_checkpoint_meta(path_dir)
    if model is None:
        model = build_model(meta["size"], text_dim=meta["text_dim"], pretrained=False, trainable=meta["trainable"])
    model_file, ema_file = _member(path_dir, MODEL_FILE), _member(path_dir, EMA_FILE)
    load_state_dict_strict(model, _read_tensors(model_file), f"checkpoint {model_file}")
    model.to(device)
    if storage.exists(ema_file):
        ema = ema if ema is not None else EmaTeacher(model, decay=meta["ema_decay"])
        load_state_dict_strict(ema.model, _read_tensors(ema_file), f"checkpoint {ema_file}")
        ema.to(device)
    elif ema is not None:
        raise CheckpointError(f"checkpoint {path_dir} has no {EMA_FILE}; start the EMA teacher from the model instead")
    if optimizer is not None:
        load_optimizer_state(path_dir, optimizer)
    return Checkpoint(model=model, ema=ema, meta=meta)


def load_optimizer_state(path_dir: str | Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore an optimizer saved with the checkpoint; its parameters must be the saved model's, in order."""
    saved = read_checkpoint_meta(path_dir)["optimizer"]
    optimizer_file = _member(path_dir, OPTIMIZER_FILE)
    if saved is None or not storage.exists(optimizer_file):
        raise CheckpointError(f"checkpoint {path_dir} has no optimizer state; start a fresh optimizer instead")
    state = _unflatten_optimizer(_read_tensors(optimizer_file), saved, optimizer.param_groups)
    try:
        optimizer.load_state_dict(state)
    except (ValueError, KeyError) as error:
        raise CheckpointError(f"checkpoint {path_dir} optimizer state does not fit this optimizer ({error})") from None


def read_checkpoint_meta(path_dir: str | Path) -> dict[str, Any]:
    """checkpoint.json of a checkpoint folder, checked for the keys loading needs."""
    path = _member(path_dir, META_FILE)
    if not storage.exists(path):
        raise CheckpointError(f"{path} not found; pass a checkpoint folder written by save_checkpoint")
    try:
        meta = json.loads(storage.read_bytes(path).decode("utf-8"))
    except (StorageError, OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path} is unreadable ({type(error).__name__}); the checkpoint is corrupt") from None
    needed = (*RESERVED_META, *REQUIRED_META)
    lacking = [key for key in needed if not isinstance(meta, dict) or key not in meta]
    if lacking:
        raise CheckpointError(f"{path} lacks {', '.join(lacking)}; the checkpoint is corrupt or not PRVOS's")
    if meta["format"] != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format {meta['format']}, this code reads {FORMAT_VERSION}; use a matching PRVOS"
        )
    return meta


def _member(path_dir: str | Path, name: str) -> str:
    """The URI of file `name` of a checkpoint folder (a local path or an fsspec URL)."""
    return storage.join(os.fspath(path_dir), name)


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    if not storage.exists(path):
        raise CheckpointError(f"{path} not found; the checkpoint is incomplete, save it again")
    try:
        if storage.is_local(path):
            return safetensors.torch.load_file(path)  # memory-mapped
        return tensors_from_bytes(storage.read_bytes(path))  # safetensors: no pickle
    except (safetensors.SafetensorError, StorageError, OSError) as error:
        raise CheckpointError(f"{path} is corrupt ({first_line(error)}); save the checkpoint again") from None


def _cpu_tensors(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies (safetensors writes neither views nor device memory)."""
    return {key: value.detach().cpu().contiguous() for key, value in state.items()}


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch optimizer state dict -> (tensors "state.<index>.<name>", JSON part: param groups, scalar state)."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entry in state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    groups = []
    for group_index, group in enumerate(state["param_groups"]):
        plain = {}
        for key, value in group.items():
            if isinstance(value, torch.Tensor):  # e.g. a tensor learning rate
                tensors[f"param_groups.{group_index}.{key}"] = value
            else:
                plain[key] = value
        groups.append(plain)
    return _cpu_tensors(tensors), {"param_groups": groups, "scalars": scalars}


def _unflatten_optimizer(
    tensors: dict[str, torch.Tensor], saved: dict[str, Any], live_groups: list[dict[str, Any]]
) -> dict[str, Any]:
    """Inverse of `_flatten_optimizer`; JSON lists become tuples where the live optimizer holds tuples (betas)."""
    state: dict[int, dict[str, Any]] = {}
    for index, entry in saved["scalars"].items():
        state.setdefault(int(index), {}).update(entry)
    groups = [dict(group) for group in saved["param_groups"]]
    for key, value in tensors.items():
        kind, index, name = key.split(".", 2)
        if kind == "state":
            state.setdefault(int(index), {})[name] = value
        else:
            groups[int(index)][name] = value
    for group, live in zip(groups, live_groups, strict=False):
        for key, value in group.items():
            if isinstance(value, list) and isinstance(live.get(key), tuple):
                group[key] = tuple(value)
    return {"state": state, "param_groups": groups}
