"""Evaluation in independent chunks of examples: resumable, and shardable across ``torchrun`` ranks.

Each chunk of ``chunk_size`` consecutive examples is evaluated on its own (every attack seeded as
configured), so its per-example results do not depend on which process ran it or on what ran before.
Rank r takes chunks r, r + W, r + 2W, ...; the results are gathered and merged in chunk order into one
:class:`RobustnessReport` whose per-example results equal a single-process run's. With ``cache_dir``
each finished chunk is written atomically, and a rerun skips the chunks already there (nothing lost when
a run is killed).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..distributed import rank_and_world
from ..state import ChunkStore, chunk_slices, run_chunks, settings_key
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


PATH_KEYS = ("checkpoint", "mixer")  # where a model came from: not what it computes


def chunk_keys(model, x, y, attacks, slices, *, eps, norm, chunk_size, model_info, indices):
    """Each chunk's cache key, by content: the attacks, ε, norm and chunk size, the model's weights and
    description (paths left out), and the chunk's own examples and indices. Raising ``n`` reuses every
    finished chunk; moving a checkpoint file recomputes nothing."""
    info = {k: v for k, v in (model_info or {}).items() if k not in PATH_KEYS}
    base = settings_key({"attacks": [a.settings() for a in attacks], "eps": eps, "norm": norm, "chunk": chunk_size,
                         "model": info}, model=model)

    def key(c: int) -> str:
        sl = slices[c]
        data = (x[sl], y[sl]) + ((indices[sl],) if indices is not None else ())
        return settings_key({"base": base}, data=data)
    return key


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
    slices = chunk_slices(len(y), chunk_size)
    rank, world = rank_and_world()
    model.eval()
    t0 = time.perf_counter()
    store = None
    if cache_dir is not None:
        store = ChunkStore(cache_dir, chunk_keys(model, x, y, attacks, slices, eps=eps, norm=norm, chunk_size=chunk_size,
                                                 model_info=model_info, indices=indices))
    prefix = (f"{label}: " if label else "") + (f"rank {rank}: " if world > 1 else "")
    n_mine = sum(slices[c].stop - slices[c].start for c in range(rank, len(slices), world))
    bar = tqdm(total=n_mine * len(attacks), desc=prefix + "attacks", unit="ex", disable=not progress)

    def compute(c: int, sl: slice) -> dict:
        return _chunk_result(model, x[sl], y[sl], attacks, eps=eps, norm=norm, device=device, batch_size=batch_size,
                             keep_adversarials=keep_adversarials, bar=bar, label=prefix)

    chunks = run_chunks(slices, compute, store=store, read_cache=not keep_adversarials,
                        encode=lambda res: {**res, "attacks": [{k: v for k, v in a.items() if k != "x_adv"}
                                                               for a in res["attacks"]]},
                        on_cached=lambda c, sl: bar.update((sl.stop - sl.start) * len(attacks)),
                        what=f"chunks ({len(y)} examples in chunks of {chunk_size})")
    bar.close()
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
