"""Saved state that makes long work resumable, in one place.

- Work split into independent chunks (:class:`ChunkStore`, :func:`run_chunks`): cached on disk as each
  finishes (a rerun resumes), shared by the ranks of a ``torchrun`` launch (rank r takes chunks r, r + W, ...),
  and gathered back in chunk order, so that the result equals a one-process run's. Used by the chunked
  evaluation, certification and the mixer's shared training attack.
- A calibration's finished checks (:class:`CalibrationJournal`).
- A training run's state (:func:`save_training_state`, :func:`restore_training_state`): weights, optimiser
  state and progress as one checkpoint unit, with one rule for ``--resume`` when there is nothing to resume.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .distributed import all_gather_objects, rank_and_world
from .io import (
    atomic_write_bytes,
    atomic_write_json,
    fault_point,
    load_resume_state,
    resume_state_exists,
    save_tensors,
    state_fingerprint,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


def settings_key(settings: dict, *, model: nn.Module | None = None, data: tuple[torch.Tensor, ...] = ()) -> str:
    """A short hash over every setting (JSON), the model's weights and the data: a cached chunk is reused
    only when all of them match."""
    h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode())
    if model is not None:
        h.update(state_fingerprint(model).encode())
    for t in data:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class ChunkStore:
    """Finished chunks under ``folder`` as ``chunk-<c>.json`` (any JSON value) or ``chunk-<c>.npz`` (a dict
    of arrays), each stamped with its key: ``key`` itself, or ``key(c)`` when it is a function (a key per
    chunk, e.g. over the chunk's own examples); a chunk written under another key counts as missing, and so
    does a damaged one."""

    def __init__(self, folder: str | Path, key: str | Callable[[int], str], *, fmt: str = "json"):
        if fmt not in ("json", "npz"):
            raise ValueError(f"fmt must be json or npz, got {fmt!r}")
        self.folder, self.fmt = Path(folder), fmt
        self._key = key

    def key(self, chunk: int) -> str:
        return self._key(chunk) if callable(self._key) else self._key

    def path(self, chunk: int) -> Path:
        return self.folder / f"chunk-{chunk:05d}.{self.fmt}"

    def load(self, chunk: int) -> Any | None:
        path = self.path(chunk)
        if not path.is_file():
            return None
        key = self.key(chunk)
        try:
            if self.fmt == "json":
                saved = json.loads(path.read_text())
                return saved["result"] if saved.get("key") == key else None
            saved = np.load(path)
            return {k: saved[k] for k in saved.files if k != "key"} if str(saved["key"]) == key else None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
            return None  # unreadable: computed again and rewritten

    def save(self, chunk: int, result: Any) -> None:
        if self.fmt == "json":
            atomic_write_json(self.path(chunk), {"key": self.key(chunk), "result": result})
            return
        buf = io.BytesIO()
        np.savez(buf, key=np.array(self.key(chunk)), **result)
        atomic_write_bytes(self.path(chunk), buf.getvalue())


def chunk_slices(n: int, chunk_size: int) -> list[slice]:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [slice(s, min(n, s + chunk_size)) for s in range(0, n, chunk_size)]


def my_chunks(n_chunks: int, *, what: str = "chunks", strict: bool = True) -> list[int]:
    """The chunks this rank computes; with ``strict``, more ranks than chunks is an error (some ranks
    would idle)."""
    rank, world = rank_and_world()
    if strict and world > n_chunks:
        raise ValueError(f"{world} ranks for {n_chunks} {what}: some ranks would get no data; launch at most as "
                         "many ranks as chunks or make the chunks smaller")
    return list(range(rank, n_chunks, world))


def run_chunks(slices: list[slice], compute: Callable[[int, slice], T], *, store: ChunkStore | None = None,
               encode: Callable[[T], Any] = lambda r: r, decode: Callable[[Any], T] = lambda r: r,
               on_cached: Callable[[int, slice], None] | None = None, read_cache: bool = True,
               what: str = "chunks", strict: bool = True, local: bool = False) -> list[T]:
    """``compute(c, slice)`` for this rank's chunks (read from ``store`` when already there, unless
    ``read_cache`` is False; written to it when computed), gathered from every rank in chunk order.
    ``local=True``: every chunk in this process, nothing gathered (work one rank does alone)."""
    mine = {}
    for c in (range(len(slices)) if local else my_chunks(len(slices), what=what, strict=strict)):
        cached = store.load(c) if store is not None and read_cache else None
        if cached is not None:
            mine[c] = decode(cached)
            if on_cached is not None:
                on_cached(c, slices[c])
            continue
        mine[c] = compute(c, slices[c])
        logger.info("%s: chunk %d computed on rank %d", what, c, rank_and_world()[0])
        if store is not None:
            store.save(c, encode(mine[c]))
            fault_point("chunk-saved")
    if local:
        return [mine[c] for c in range(len(slices))]
    merged: dict = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    return [merged[c] for c in range(len(slices))]


class CalibrationJournal:
    """Finished calibration work (the robust reference, each verified candidate's robust accuracy) in a
    JSON file, written after every entry. ``key`` names the exact model, data and settings: a journal
    written under another key is not used (it is replaced by the first new entry), so a resumed calibration
    only reuses numbers measured on the same composite, points and attacks."""

    def __init__(self, path: str | Path, key: str):
        self.path, self.key, self.entries = Path(path), key, {}
        if self.path.is_file():
            try:
                saved = json.loads(self.path.read_text())
            except (OSError, ValueError):
                saved = {}
            if saved.get("key") == key:
                self.entries = dict(saved.get("entries", {}))
                logger.info("calibration resumes from %s (%d finished entries)", self.path, len(self.entries))
            else:
                logger.warning("calibration journal %s was written for another model or settings; starting afresh",
                               self.path)

    def get(self, name: str):
        return self.entries.get(name)

    def put(self, name: str, value) -> None:
        self.entries[name] = value
        atomic_write_json(self.path, {"key": self.key, "entries": self.entries})
        fault_point("journal-saved")

    def drop(self, name: str) -> None:
        """Forget one entry (e.g. a part-way state once its check has finished)."""
        if self.entries.pop(name, None) is not None:
            atomic_write_json(self.path, {"key": self.key, "entries": self.entries})

    def discard(self) -> None:
        """Remove the file (the calibration finished and its record is saved elsewhere)."""
        self.path.unlink(missing_ok=True)


def save_training_state(stem: str | Path, parts: dict[str, dict[str, torch.Tensor]], metadata: dict) -> None:
    """A training run's state as one checkpoint unit: each part's tensors (``model``, ``ema``, ``optim``, ...)
    under ``<part>.<name>``, and ``metadata`` (progress, settings) in the sidecar."""
    tensors = {f"{part}.{name}": t for part, named in parts.items() for name, t in named.items()}
    save_tensors(stem, tensors, metadata)


def load_training_state(stem: str | Path, settings: dict, *, resume: bool, what: str
                        ) -> tuple[dict[str, dict[str, torch.Tensor]], dict] | None:
    """The state to continue ``what`` from, as ``(parts, metadata)``: None when not resuming, and None with a
    warning when there is nothing to resume yet (so one ``--resume`` command starts and restarts a run).
    A state written with other ``settings``, or half a state, is an error (see ``io.load_resume_state``)."""
    if not resume:
        return None
    if not resume_state_exists(stem):
        logger.warning("nothing to resume at %s yet: %s starts from scratch", stem, what)
        return None
    tensors, meta = load_resume_state(stem, settings)
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        part, _, name = key.partition(".")
        parts.setdefault(part, {})[name] = t
    return parts, meta

