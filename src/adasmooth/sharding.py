"""Work split into independent chunks: cached on disk as each finishes (a rerun resumes), shared by the
ranks of a ``torchrun`` launch (rank r takes chunks r, r + W, ...), and gathered back in chunk order, so
that the result equals a one-process run's. Used by the chunked evaluation, certification and the mixer's
shared training attack."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from .distributed import all_gather_objects, rank_and_world
from .io import atomic_write_bytes, atomic_write_json, fault_point, state_fingerprint

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
               what: str = "chunks", strict: bool = True) -> list[T]:
    """``compute(c, slice)`` for this rank's chunks (read from ``store`` when already there, unless
    ``read_cache`` is False; written to it when computed), gathered from every rank in chunk order."""
    mine = {}
    for c in my_chunks(len(slices), what=what, strict=strict):
        cached = store.load(c) if store is not None and read_cache else None
        if cached is not None:
            mine[c] = decode(cached)
            if on_cached is not None:
                on_cached(c, slices[c])
            continue
        mine[c] = compute(c, slices[c])
        if store is not None:
            store.save(c, encode(mine[c]))
            fault_point("chunk-saved")
    merged: dict = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    return [merged[c] for c in range(len(slices))]
