"""Ship a test-set comparison with the embedded default, for `adasmooth demo` to draw beside its live rows.

Reads an `adasmooth compare` result (compare.json) and writes pretrained/<dataset>/comparison.json: the
fixed-α curve and each model's point, the margin of the adaptive model with its interval, the number of
points, ε, whether the attack plans were alike, and fingerprints of the shipped weights it was measured on
(the demo draws it only when they match the models it loads).

    .venv/bin/python scripts/ship_comparison.py docs/compare-w32/compare.json --adaptive mixer \\
        --command "adasmooth compare --allow-different-plans ..."
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from adasmooth.io import atomic_write_json, state_fingerprint
from adasmooth.pretrained import load_pretrained, pretrained_dir


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_json")
    parser.add_argument("--adaptive", default="mixer", help="the compared adaptive model's name in the result")
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--command", default="", help="the compare command that made the result")
    args = parser.parse_args()
    result = json.loads(Path(args.compare_json).read_text())
    pair = load_pretrained(args.dataset)
    mixer_meta = json.loads((pretrained_dir() / args.dataset / "mixer.json").read_text())
    models = {m["name"]: m for m in result["models"]}
    fixed = [{k: m[k] for k in ("name", "alpha", "standard_scale", "robust_scale", "clean", "robust", "attacks")}
             for m in result["models"] if m["kind"] == "fixed"]
    ada = models[args.adaptive]
    record = {
        "kind": "test-comparison", "dataset": result["dataset"], "split": result["split"], "n": result["n_shared"],
        "eps": result["eps"], "norm": result["norm"], "like_for_like": result["like_for_like"],
        "plan_differences": result["plan_differences"], "plan_extras": result.get("plan_extras") or {},
        "fixed_envelope": result.get("fixed_envelope"),
        "fingerprints": {"standard": state_fingerprint(pair.standard), "robust": state_fingerprint(pair.robust),
                         "mixer_sha256": mixer_meta["sha256"]},
        "fixed_curve": result["fixed_curve"], "fixed": fixed,
        "bases": {k: {"clean": models[n]["clean"], "robust": models[n]["robust"]}
                  for k, n in (("standard", next(m for m in models if models[m]["kind"] == "standard")),
                               ("robust", next(m for m in models if models[m]["kind"] == "robust")))},
        "adaptive": {"clean": ada["clean"], "robust": ada["robust"], "attacks": ada["attacks"],
                     "clean_above_fixed_curve": ada["clean_above_fixed_curve"],
                     "interval": ada["clean_above_interval"], "nearest_fixed": ada["nearest_fixed"],
                     "margin_bound": ada.get("margin_bound")},
        "bootstrap": result.get("bootstrap"), "source": args.compare_json, "command": args.command,
    }
    out = pretrained_dir() / args.dataset / "comparison.json"
    atomic_write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
