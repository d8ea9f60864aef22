"""Evaluation in independent chunks of examples: resumable, and shardable across ``torchrun`` ranks.

Each chunk of ``chunk_size`` consecutive examples is evaluated on its own (every attack seeded as
configured), so its per-example results do not depend on which process ran it or on what ran before.
Rank r takes chunks r, r + W, r + 2W, ...; the results are gathered and merged in chunk order into one
:class:`RobustnessReport` whose per-example results equal a single-process run's. With ``cache_dir``
each finished chunk is written atomically, and a rerun skips the chunks already there (nothing lost when
a run is killed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import all_gather_objects, rank_and_world
from ..io import atomic_write_json
from .accuracy import correct_mask
from .checks import check_evaluation_inputs
from .report import RobustnessReport, assemble_report
from .runner import run_attacks

logger = logging.getLogger(__name__)


def _chunk_result(model, x, y, attacks, *, eps, norm, device, batch_size, keep_adversarials, bar=None, label="") -> dict:
    clean = correct_mask(model, x, y, device=device, batch_size=batch_size)
    rows = []
    for attack, robust, out, seconds in run_attacks(
            model, x, y, attacks, clean, eps=eps, norm=norm, device=device, batch_size=batch_size,
            on_start=(lambda a: bar.set_description(f"{label}{a.name}")) if bar is not None else None):
        if bar is not None:
            bar.update(len(y))
        rows.append({"name": attack.name, "robust": robust.tolist(), "seconds": seconds, "extra": out.extra,
                     "x_adv": out.x_adv.cpu() if keep_adversarials and out.x_adv is not None else None})
    return {"clean": clean.tolist(), "attacks": rows}


def evaluate_in_chunks(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: list,
    *,
    eps: float,
    norm: str = "Linf",
    chunk_size: int = 500,
    device: str | torch.device = "cpu",
    batch_size: int = 250,
    model_info: dict | None = None,
    dataset: str = "",
    split: str = "test",
    indices: torch.Tensor | None = None,
    cache_dir: str | Path | None = None,
    keep_adversarials: bool = False,
    sanity_checks: bool = True,
    progress: bool = True,
    label: str | None = None,
) -> tuple[RobustnessReport, dict | None]:
    """Like :func:`~adasmooth.evaluation.evaluate_robustness`, chunk by chunk, sharded over the ranks of an
    initialised process group (every rank must call it with the same arguments).

    The progress bar counts example-attacks (each example under each attack) and names ``label`` (the
    model), the running attack and the rank. Returns ``(report, adversarials)`` on every rank; ``adversarials`` maps attack name to the adversarial
    images of all examples when ``keep_adversarials`` (gathered to every rank), else None.
    """
    check_evaluation_inputs(model, x, y, device)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    rank, world = rank_and_world()
    n_chunks = -(-len(y) // chunk_size)
    if world > n_chunks:
        raise ValueError(f"{world} ranks for {len(y)} examples in {n_chunks} chunks of {chunk_size}: some ranks "
                         "would get no data; launch at most as many ranks as chunks or make chunk_size smaller")
    model.eval()
    t0 = time.perf_counter()
    cache = Path(cache_dir) if cache_dir is not None else None
    key = _fingerprint(attacks, eps, norm, chunk_size, len(y), indices, model_info)
    mine = {}
    todo = list(range(rank, n_chunks, world))
    slices = {c: slice(c * chunk_size, min(len(y), (c + 1) * chunk_size)) for c in todo}
    prefix = (f"{label}: " if label else "") + (f"rank {rank}: " if world > 1 else "")
    bar = tqdm(total=sum(s.stop - s.start for s in slices.values()) * len(attacks), desc=prefix + "attacks",
               unit="ex", disable=not progress)
    for c in todo:
        sl = slices[c]
        path = cache / f"chunk-{c:05d}.json" if cache is not None else None
        if path is not None and path.is_file() and not keep_adversarials:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                mine[c] = saved["result"]
                bar.update((sl.stop - sl.start) * len(attacks))
                continue
        res = _chunk_result(model, x[sl], y[sl], attacks, eps=eps, norm=norm, device=device, batch_size=batch_size,
                            keep_adversarials=keep_adversarials, bar=bar, label=prefix)
        if path is not None:
            atomic_write_json(path, {"key": key, "result": {**res, "attacks": [
                {k: v for k, v in a.items() if k != "x_adv"} for a in res["attacks"]]}})
        mine[c] = res
    bar.close()
    merged: dict = {}
    for part in all_gather_objects(mine):
        merged.update(part)
    chunks = [merged[c] for c in range(n_chunks)]
    clean = torch.tensor([v for ch in chunks for v in ch["clean"]], dtype=torch.bool)
    worst = clean.clone()
    rows = []
    adversarials = {} if keep_adversarials else None
    for i, attack in enumerate(attacks):
        robust = torch.tensor([v for ch in chunks for v in ch["attacks"][i]["robust"]], dtype=torch.bool)
        worst &= robust
        row = {**attack.settings(), "accuracy": float(robust.float().mean()),
               "seconds": round(sum(ch["attacks"][i]["seconds"] for ch in chunks), 2)}
        row.update(_merge_extras([ch["attacks"][i]["extra"] for ch in chunks], [len(ch["clean"]) for ch in chunks]))
        rows.append(row)
        if keep_adversarials:
            adversarials[attack.name] = torch.cat([ch["attacks"][i]["x_adv"] for ch in chunks])
    report = assemble_report(model, x, y, rows, clean, worst, eps=eps, norm=norm, device=device, batch_size=batch_size,
                             model_info=model_info, dataset=dataset, split=split, indices=indices,
                             sanity_checks=sanity_checks, seconds=time.perf_counter() - t0,
                             environment_extra={"world_size": world, "chunk_size": chunk_size})
    return report, adversarials


def _merge_extras(extras: list[dict], sizes: list[int]) -> dict:
    """AutoAttack's per-chunk extras: accuracies after each sub-attack weighted by chunk size, warnings once."""
    out: dict = {}
    if not extras or not extras[0]:
        return out
    total = sum(sizes)
    after = [e.get("after_each_subattack") for e in extras]
    if all(a is not None for a in after) and after:
        names = list(after[0])
        out["after_each_subattack"] = {k: sum(a.get(k, 0.0) * s for a, s in zip(after, sizes)) / total for k in names}
    seen: list = []
    for e in extras:
        for w in e.get("warnings", []):
            if w not in seen:
                seen.append(w)
    out["warnings"] = seen
    for k, v in extras[0].items():
        if k not in ("after_each_subattack", "warnings"):
            out[k] = v
    return out


def _fingerprint(attacks, eps, norm, chunk_size, n, indices, model_info) -> str:
    desc = json.dumps({"attacks": [a.settings() for a in attacks], "eps": eps, "norm": norm, "chunk": chunk_size,
                       "model": model_info,
                       "n": n, "indices": indices.tolist() if indices is not None else None}, sort_keys=True, default=str)
    return hashlib.sha256(desc.encode()).hexdigest()[:16]
