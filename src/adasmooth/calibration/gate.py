"""Calibrate an adaptive mixture's test-time γ scale, γ bias and α range (and, where asked, the robust model's
logit scale s_h) on validation data.

The attacked copies are crafted once with a gate-aware PGD against the composite at its training settings;
every candidate (k, b, α_lo, α_hi, s_h) is then scored from cached base logits and γ_raw (a cheap, optimistic
proxy). Candidates that pass the proxy are verified by fresh attacks on the candidate itself, in order of
clean accuracy (ties: the more robust proxy first): ``strategy="scan"`` checks them one by one until one
holds, against a set of attacks (gate-aware APGD-CE for several w, gate-aware APGD-T, transfer from the
standard model), so no single attack is tuned to; ``strategy="floor"`` takes, for each floor α_lo, its most
clean-accurate candidate and bisects over the floors against the same set (robustness rises with the floor,
whatever else is set: a few checks where a scan of an optimistic proxy's ranking can spend a dozen on one
floor); ``strategy="bisect"`` (the older rule) bisects, assuming robustness falls as clean accuracy rises,
against gate-aware APGD-CE and APGD-T at w = 0.5. A candidate that failed its check is never chosen; every
checked candidate is recorded. Validation only: never run it on the points you report.

A :class:`~adasmooth.state.CalibrationJournal` keeps the finished checks on disk, so a calibration killed part-way (each
check of a large composite is many minutes of attacks) resumes where it stopped; a check's own finished
pieces are journalled too, so an interrupted check continues after its last finished piece.
"""

from __future__ import annotations

import itertools
import json
import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from ..attacks import gate_pgd
from ..evaluation.accuracy import attack_batched, correct_mask
from ..evaluation.attack_specs import GateAPGDAttack, TransferAttack
from ..evaluation.autoattack import SUB_ATTACKS, run_autoattack
from ..mixing import apply_maps, mix_log_probs
from ..state import CalibrationJournal
from .replay import AdversarialPool

logger = logging.getLogger(__name__)


@torch.no_grad()
def _cached(model, x, device, batch_size):
    gs, hs, raws = [], [], []
    for i in range(0, len(x), batch_size):
        g, h, gamma = model.components(x[i : i + batch_size].to(device))
        gs.append(g.cpu()), hs.append(h.cpu())
        raws.append(((gamma - model.gamma_bias) / model.gamma_scale).cpu())  # = BN(γ_raw)
    return torch.cat(gs), torch.cat(hs), torch.cat(raws)


def _accuracy(model, g, h, bn_raw, y, bias, alpha_lo, alpha_hi, scale=None, robust_scale=None):
    g, h = apply_maps(g, h, getattr(model, "standard_map", None), getattr(model, "robust_map", None))
    a = torch.sigmoid((model.gamma_scale if scale is None else scale) * bn_raw + bias)
    a = alpha_lo + (alpha_hi - alpha_lo) * a
    mixed = mix_log_probs(g, h, a, standard_scale=model.standard_scale,
                          robust_scale=model.robust_scale if robust_scale is None else robust_scale)
    return float((mixed.argmax(1) == y).float().mean())


def gate_apgd_robust_mask(model, x, y, *, eps, device="cpu", batch_size=250, seed=0, n_iter=50, w=0.5,
                          n_target_classes=3) -> torch.Tensor:
    """Per-example robustness of an adaptive composite under the worst of the official APGD-CE and APGD-T
    on the gate-aware loss (the verification attack of :func:`calibrate_gate`)."""

    robust = correct_mask(model, x, y, device=device, batch_size=batch_size)
    for attack in (GateAPGDAttack("ce", w, n_iter, seed=seed),
                   GateAPGDAttack("dlr-targeted", w, n_iter, n_target_classes, seed=seed)):
        idx = robust.nonzero().squeeze(1)
        if len(idx) == 0:
            break
        out = attack.robust_mask(model, x[idx], y[idx], eps=eps, norm="Linf", device=device, batch_size=batch_size,
                                 progress=False)
        robust[idx[~out.robust.cpu()]] = False
    return robust


def gate_attack_set_robust_mask(model, x, y, *, eps, standard=None, device="cpu", batch_size=250, seed=0,
                                n_iter=50, weights=(0.0, 0.5, 1.0), n_target_classes=3,
                                autoattack=(), square_queries: int = 5000,
                                stop_below: float | None = None, stop_chunk: int = 64, progress: bool = False,
                                desc: str = "", pool: AdversarialPool | None = None, resume: dict | None = None,
                                on_piece=None) -> torch.Tensor:
    """Per-example robustness of an adaptive composite under a set of attacks aimed at it: gate-aware
    APGD-CE for each w in ``weights``, gate-aware APGD-T (w = 0.5), PGD transferred from ``standard``
    (when given), then the official AutoAttack sub-attacks in ``autoattack`` (e.g. ``("fab-t", "square")``
    at AutoAttack's standard settings, Square with ``square_queries`` queries), each run on the examples
    still robust. Square needs no gradient: it finds what a gate that masks gradients hides from the others.
    With ``stop_below``, stops as soon as the robust share falls below it (the verdict cannot recover); each
    attack then runs on pieces of ``stop_chunk`` examples with the stop checked between them, so a failing
    check ends inside a slow attack (FAB-T, Square) instead of after it.
    With ``pool`` (an :class:`~adasmooth.calibration.replay.AdversarialPool` over ``x``), its examples are tried
    first, and every example an attack finds is added to it. ``progress`` shows one bar step per attack.
    ``on_piece(state)`` is called after every finished piece with a small JSON-able state; passing a saved
    state back as ``resume`` continues the same check after its last finished piece (pieces already attacked
    are not attacked again, and the examples they broke stay broken)."""

    bad = [a for a in autoattack if a not in SUB_ATTACKS]
    if bad:
        raise ValueError(f"unknown AutoAttack sub-attacks {bad}; known: {', '.join(SUB_ATTACKS)}")

    robust = correct_mask(model, x, y, device=device, batch_size=batch_size).cpu()
    if pool is not None:
        robust &= pool.robust_mask(model, y, device=device, batch_size=batch_size)
    attacks = [GateAPGDAttack("ce", w, n_iter, seed=seed) for w in weights]
    attacks.append(GateAPGDAttack("dlr-targeted", 0.5, n_iter, n_target_classes, seed=seed))
    if standard is not None:
        attacks.append(TransferAttack(standard, "standard", steps=n_iter, seed=seed))
    steps = [(a.name, a) for a in attacks] + [(f"{name} (official)", name) for name in autoattack]
    bar = tqdm(steps, desc=desc or "verification", unit="attack", leave=False, disable=not progress)
    def settled() -> bool:
        return stop_below is not None and float(robust.float().mean()) < stop_below

    resume = _usable_resume(resume, len(y), len(steps))
    if resume is not None:
        robust &= torch.tensor(resume["robust"], dtype=torch.bool)
        logger.info("%s resumes at attack %d of %d, after %d finished pieces", desc or "verification",
                    resume["attack"] + 1, len(steps), resume["pieces_done"])
    for a_i, (label, attack) in enumerate(bar):  # one at a time, on what is still robust, so the early stop applies
        if resume is not None and a_i < resume["attack"]:
            continue
        resumed = resume is not None and a_i == resume["attack"]
        idx = torch.tensor(resume["start"], dtype=torch.long) if resumed else robust.nonzero().squeeze(1)
        if len(idx) == 0 or settled():
            break
        pieces = idx.split(stop_chunk) if stop_below is not None and stop_chunk > 0 else (idx,)
        for i, piece in enumerate(pieces):
            if settled():
                break
            if resumed and i < resume["pieces_done"]:
                continue
            bar.set_postfix_str(f"{label} on {len(idx)} ex (piece {i + 1}/{len(pieces)}), "
                                f"robust so far {float(robust.float().mean()):.3f}")
            out = _run_check_attack(attack, model, x[piece], y[piece], eps=eps, seed=seed, batch_size=batch_size,
                                    device=device, square_queries=square_queries)
            broken = ~out.robust.cpu()
            robust[piece[broken]] = False
            if pool is not None:
                pool.add(piece[broken], out.x_adv[broken.to(out.x_adv.device)], source=label)
            if on_piece is not None:
                on_piece({"attack": a_i, "label": label, "start": idx.tolist(), "pieces_done": i + 1,
                          "robust": robust.int().tolist()})
    return robust


def _usable_resume(state: dict | None, n: int, n_attacks: int) -> dict | None:
    """A saved part-way state of a check, or None where there is none or it does not fit these points/attacks."""
    if state and not (len(state.get("robust", ())) == n and 0 <= int(state.get("attack", -1)) < n_attacks
                      and int(state.get("pieces_done", -1)) >= 0 and all(0 <= int(i) < n for i in state.get("start", ()))):
        logger.warning("a saved part-way check does not fit these points or attacks; the check starts afresh")
        return None
    return state or None


def _run_check_attack(attack, model, x, y, *, eps, seed, batch_size, device, square_queries):
    """One attack of a check: an official AutoAttack sub-attack given by name, or an attack spec."""
    if isinstance(attack, str):
        return run_autoattack(model, x, y, eps=eps, version="custom", attacks=[attack], seed=seed,
                              batch_size=batch_size, device=device,
                              options={"square.n_queries": int(square_queries)} if attack == "square" else None)
    return attack.robust_mask(model, x, y, eps=eps, norm="Linf", device=device, batch_size=batch_size, progress=False)


def robust_reference(robust, x, y, *, eps, device="cpu", batch_size=250, seed=0, n_iter=50, autoattack=(),
                     square_queries: int = 5000) -> float:
    """The robust model's accuracy under the official APGD-CE and APGD-T (3 targets), then the official
    AutoAttack sub-attacks in ``autoattack`` (Square with ``square_queries``): the attack family and budget
    that :func:`calibrate_gate` verifies the composite with, so that "robust kept" compares like with like."""

    bad = [a for a in autoattack if a not in SUB_ATTACKS]
    if bad:
        raise ValueError(f"autoattack takes AutoAttack sub-attacks ({', '.join(SUB_ATTACKS)}), got {bad}")
    extra = [a for a in autoattack if a not in ("apgd-ce", "apgd-t")]
    options = {"apgd.n_iter": n_iter, "apgd_targeted.n_iter": n_iter, "apgd_targeted.n_target_classes": 3}
    if "square" in extra:
        options["square.n_queries"] = int(square_queries)
    res = run_autoattack(robust, x, y, eps=eps, version="custom", attacks=["apgd-ce", "apgd-t", *extra], seed=seed,
                         batch_size=batch_size, device=device, options=options)
    return res.robust_accuracy


def rank_candidates(rows: list[dict], need: float) -> list[dict]:
    """Grid points whose proxy robust accuracy reaches ``need``, most clean-accurate first; equal clean
    accuracy (common: it moves in steps of one example) goes to the more robust proxy, not to grid order.

    On a few hundred points many settings tie on clean accuracy: at a floor α_lo, α_hi = 1 usually costs no
    clean example over α_hi = 0.95 (clean inputs sit near the floor) while it raises α on attacked ones.
    """
    return sorted((r for r in rows if r["robust_proxy"] >= need), key=lambda r: (-r["clean"], -r["robust_proxy"]))


@dataclass(frozen=True)
class GateCalibrationSettings:
    """What a gate calibration searches and how it checks (see :func:`calibrate_gate`)."""

    eps: float
    keep_robust: float = 0.97  # keep this share of the robust model's accuracy
    biases: tuple[float, ...] = (0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.5)
    alpha_los: tuple[float, ...] = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)  # the top ones for sharp maps
    alpha_his: tuple[float, ...] = (1.0,)
    gamma_scales: tuple[float, ...] = ()  # (): the model's own scale
    robust_scales: tuple[float, ...] = ()  # test-time s_h values searched; (): the model's own
    steps: int = 20  # gate-aware PGD steps of the proxy attack
    verify_iters: int = 50  # APGD iterations of each check
    strategy: str = "bisect"  # "floor", "scan" or "bisect"
    max_checks: int = 12  # scan only
    autoattack: tuple[str, ...] = ()  # official sub-attacks added to every floor/scan check
    square_queries: int = 5000
    batch_size: int = 250
    seed: int = 0

    def __post_init__(self):
        if self.strategy not in ("bisect", "scan", "floor"):
            raise ValueError(f"strategy must be bisect, scan or floor, got {self.strategy!r}")

    @classmethod
    def from_config(cls, cfg, *, verify_iters: int = 50, gamma_scales=(1.0, 2.0, 3.0), alpha_his=(0.95, 1.0)):
        """The settings ``fit-mixer`` and ``calibrate-mixer`` use with ``cfg`` (a :class:`~adasmooth.config.Config`)."""
        mc = cfg.mixer
        return cls(eps=cfg.threat.eps, keep_robust=cfg.sweep.keep_robust, gamma_scales=tuple(gamma_scales),
                   alpha_his=tuple(alpha_his), verify_iters=verify_iters, strategy=mc.calibration_strategy,
                   autoattack=tuple(mc.calibration_autoattack), square_queries=mc.calibration_square_queries,
                   robust_scales=tuple(mc.calibration_robust_scales), seed=mc.seed)

    def verify_attack(self) -> dict:
        """How the checks attack, for the record."""
        if self.strategy == "bisect":
            return {"name": "gate-apgd-ce + gate-apgd-t3", "w": 0.5, "n_iter": self.verify_iters, "seed": self.seed}
        return {"name": "gate-apgd-ce (w 0, 0.5, 1) + gate-apgd-t3 (w 0.5) + transfer from standard"
                        + "".join(f" + {a} (official)" for a in self.autoattack),
                "n_iter": self.verify_iters, "seed": self.seed,
                **({"square_queries": self.square_queries} if "square" in self.autoattack else {})}


def calibrate_gate(model, x: torch.Tensor, y: torch.Tensor, settings: GateCalibrationSettings, *,
                   robust_reference: float, verify=None, journal: CalibrationJournal | None = None,
                   clean_data: tuple[torch.Tensor, torch.Tensor] | None = None,
                   pool: AdversarialPool | None = None, device="cpu", progress: bool = False) -> dict:
    """Choose ``gamma_bias`` and ``alpha_range`` (with ``settings.robust_scales``, also ``robust_scale``) for the most clean accuracy whose robust accuracy keeps
    ``settings.keep_robust`` of ``robust_reference``; sets them on ``model`` and returns a report.

    Every grid point (γ scales × biases × α_lo × α_hi × s_h) is scored by a cheap proxy (images crafted once, by
    gate-aware PGD at the model's current settings). Candidates that pass the proxy, sorted by clean accuracy,
    are then verified by fresh attacks on each candidate itself: ``verify(model, x, y)`` returns a per-example
    robust mask. ``scan`` checks candidates in order until one holds, ``floor`` bisects over the floors α_lo
    (each floor's most clean-accurate candidate), both by default against :func:`gate_attack_set_robust_mask`;
    ``bisect`` bisects against the worst of gate-aware APGD-CE and APGD-T. The chosen point's verified number
    is reported; where nothing verifies, the most robust grid point is checked, used and flagged. With
    ``journal``, checks already recorded there are not attacked again, and each new one is recorded.
    ``clean_data`` (e.g. the whole validation split): the images on which candidates' clean accuracy is
    measured and ranked; by default ``x, y``, where on a few hundred points floors tie or differ by one example.
    ``pool`` (an :class:`~adasmooth.calibration.replay.AdversarialPool` over ``x``; ``floor`` and ``scan``): every
    check first tries the adversarial examples the checks before it found, and adds what its attacks find.
    """
    model.eval()
    need = settings.keep_robust * robust_reference
    check = _Checker(model, x, y, need, verify or _default_verify(settings, device, progress, pool), journal,
                     key_fields=_CHECK_KEYS + (("robust_scale",) if settings.robust_scales else ()))
    rows = _proxy_grid(model, x, y, settings, device=device, progress=progress, clean_data=clean_data)
    search = {"scan": _scan, "floor": _floor_bisect, "bisect": _bisect}[settings.strategy]
    best = search(check, rank_candidates(rows, need), settings)
    fallback = best is None
    if fallback:  # nothing verified: the most robust setting in the grid
        logger.warning("calibration: no candidate kept %.1f%% robust accuracy under the verification attacks; "
                       "falling back to the most robust grid point", 100 * need)
        full = {"stop_below": None} if check.stops_early else {}  # its true number
        best = check(max(rows, key=lambda r: (r["alpha_lo"], r["alpha_hi"], r["robust_scale"], r["gamma_bias"])),
                     **full)
    _apply(model, best)
    return {"chosen": best, "target_met": best["robust_verified"] >= need, "fallback": fallback,
            "robust_reference": robust_reference, "keep_robust": settings.keep_robust,
            "robust_verified": best["robust_verified"], "checked": check.rows, "n": len(y), "eps": settings.eps,
            "clean_n": len(y) if clean_data is None else len(clean_data[1]),
            "proxy_attack": {"name": "gate-pgd", "w": 0.5, "steps": settings.steps, "seed": settings.seed},
            "strategy": settings.strategy, "verify_attack": "custom" if verify is not None else settings.verify_attack(),
            **({"replay_pool": len(pool)} if pool is not None and verify is None else {}), "grid": rows}


def _default_verify(settings: GateCalibrationSettings, device, progress: bool, pool=None):
    s = settings
    if s.strategy == "bisect":
        def verify(m, xs, ys):
            return gate_apgd_robust_mask(m, xs, ys, eps=s.eps, device=device, batch_size=s.batch_size, seed=s.seed,
                                         n_iter=s.verify_iters)
        return verify

    # a failing candidate's number is where its check stopped
    def verify(m, xs, ys, stop_below=None, desc="", resume=None, on_piece=None):
        return gate_attack_set_robust_mask(m, xs, ys, eps=s.eps, standard=m.standard, device=device,
                                           batch_size=s.batch_size, seed=s.seed, n_iter=s.verify_iters,
                                           autoattack=s.autoattack, square_queries=s.square_queries,
                                           stop_below=stop_below, progress=progress, desc=desc, pool=pool,
                                           resume=resume, on_piece=on_piece)
    verify.stops_early = True
    verify.resumable = True  # takes resume= and on_piece= (a check continues after its last finished piece)
    return verify


def _proxy_grid(model, x, y, s: GateCalibrationSettings, *, device, progress: bool, clean_data=None) -> list[dict]:
    """Clean and proxy-robust accuracy of every grid point, from images crafted once by gate-aware PGD; clean
    accuracy on ``clean_data`` where given (the proxy's own clean term stays on ``x``)."""
    gen = torch.Generator().manual_seed(s.seed)
    x_adv = attack_batched(gate_pgd, model, x, y, eps=s.eps, w=0.5, steps=s.steps, generator=gen, device=device,
                           batch_size=s.batch_size, desc="calibration attack", progress=progress)
    clean = _cached(model, x, device, s.batch_size)
    adv = _cached(model, x_adv, device, s.batch_size)
    wide = None if clean_data is None else (*_cached(model, clean_data[0], device, s.batch_size), clean_data[1])
    rows = []
    for k, b, lo, hi, sh in itertools.product(s.gamma_scales or (model.gamma_scale,), s.biases, s.alpha_los,
                                              s.alpha_his, s.robust_scales or (model.robust_scale,)):
        if lo > hi:
            continue
        c = _accuracy(model, *clean, y, b, lo, hi, scale=k, robust_scale=sh)
        r = min(c, _accuracy(model, *adv, y, b, lo, hi, scale=k, robust_scale=sh))
        c = c if wide is None else _accuracy(model, *wide, b, lo, hi, scale=k, robust_scale=sh)
        rows.append({"gamma_scale": k, "gamma_bias": b, "alpha_lo": lo, "alpha_hi": hi, "robust_scale": float(sh),
                     "clean": c, "robust_proxy": r})
    return rows


def _apply(model, row) -> None:
    model.gamma_scale = float(row["gamma_scale"])
    model.gamma_bias = float(row["gamma_bias"])
    model.alpha_range = (float(row["alpha_lo"]), float(row["alpha_hi"]))
    if "robust_scale" in row:
        model.robust_scale = float(row["robust_scale"])


_CHECK_KEYS = ("gamma_scale", "gamma_bias", "alpha_lo", "alpha_hi")  # a check's journal name (s_h only when searched)


class _Checker:
    """Verify a candidate on the model itself (journalled), recording every check."""

    def __init__(self, model, x, y, need: float, verify, journal, key_fields=_CHECK_KEYS):
        self.model, self.x, self.y, self.need = model, x, y, need
        self.verify, self.journal, self.rows, self.key_fields = verify, journal, [], key_fields
        self.stops_early = getattr(verify, "stops_early", False)
        self.resumable = getattr(verify, "resumable", False)

    def __call__(self, row, **full) -> dict:
        _apply(self.model, row)
        name = "check " + json.dumps({**{k: row[k] for k in self.key_fields}, **full}, sort_keys=True)
        robust = self.journal.get(name) if self.journal is not None else None
        if robust is None:
            extra = {"stop_below": self.need, "desc": f"calibration check {len(self.rows) + 1}"} if self.stops_early else {}
            partial = "part-way " + name  # a check's finished pieces, so an interrupted check continues
            if self.journal is not None and self.resumable:
                extra["resume"] = self.journal.get(partial)
                extra["on_piece"] = lambda state: self.journal.put(partial, state)
            robust = float(self.verify(self.model, self.x, self.y, **{**extra, **full}).float().mean())
            if self.journal is not None:
                self.journal.put(name, robust)
                self.journal.drop(partial)
        self.rows.append({**row, "robust_verified": robust, "passed": robust >= self.need})
        logger.info("calibration: k=%g b=%g alpha=[%g, %g] s_h=%g clean %.3f verified robust %.3f", row["gamma_scale"],
                    row["gamma_bias"], row["alpha_lo"], row["alpha_hi"], row.get("robust_scale", self.model.robust_scale),
                    row["clean"], robust)
        return self.rows[-1]


def _scan(check, candidates, s) -> dict | None:
    """Most clean-accurate first; the first that holds is the answer."""
    for row in candidates[: s.max_checks]:
        if check(row)["passed"]:
            return check.rows[-1]
    return None


def _floor_bisect(check, candidates, s) -> dict | None:
    """Per α floor its most clean-accurate candidate; bisect over the floors (robustness rises with them).

    Robustness rises with the floor at a fixed α_hi and s_h, not across them (a ceiling of 0.95 buys a little
    clean accuracy and costs robustness at every floor), so there is one bisection per (s_h, α_hi), the one whose
    best candidate is the most clean-accurate first; a later one bisects only over the floors that would beat
    the answer found so far in clean accuracy, so it costs checks only where it could win.
    """
    ladders: dict[tuple, dict[float, dict]] = {}
    for row in candidates:  # ranked: the first row of each (s_h, α_hi, floor) is its best
        ladders.setdefault((row.get("robust_scale"), row["alpha_hi"]), {}).setdefault(row["alpha_lo"], row)
    best = None
    for floors in ladders.values():  # in rank order of each ladder's best candidate
        ladder = [floors[f] for f in sorted(floors) if best is None or floors[f]["clean"] > best["clean"]]
        found = _bisect(check, ladder, s)
        if found is not None and (best is None or found["clean"] > best["clean"]):
            best = found
    return best


def _bisect(check, ladder, s) -> dict | None:
    """Bisect a ladder ordered from most clean-accurate to most robust for the first that passes."""
    best, lo_i, hi_i = None, 0, len(ladder) - 1
    while lo_i <= hi_i:
        mid = (lo_i + hi_i) // 2
        row = check(ladder[mid])
        if row["passed"]:
            best, hi_i = row, mid - 1
        else:
            lo_i = mid + 1
    return best
