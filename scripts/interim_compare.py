"""Where a running comparison stands: the mixer's finished evaluation chunks against the finished reports of
the bases and the fixed mixtures, on the same points. An interim look (a few hundred points decide nothing):
the claim is `adasmooth compare` over every report once the evaluation has ended.

    .venv/bin/python scripts/interim_compare.py experiments/wide-compare-lb [--chunk 100]

For each finished chunk of OUT/adaptive/.chunks-*/ (chunk i holds positions i*CHUNK ... i*CHUNK+CHUNK-1 of the
seeded test points), the per-example worst case over the mixer's plan; for every other report in OUT, its
robust flags at the same positions. Prints robust counts and the discordant pairs (robust only for the mixer,
only for the other model).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def mixer_flags(chunks_dir: Path, chunk: int) -> dict[int, bool]:
    """Position -> robust under every attack of the mixer's plan, for the finished chunks."""
    flags = {}
    for path in sorted(chunks_dir.glob("chunk-*.json")):
        i = int(path.stem.split("-")[1])
        result = json.loads(path.read_text())["result"]
        for j, clean in enumerate(result["clean"]):
            flags[i * chunk + j] = bool(clean) and all(a["robust"][j] for a in result["attacks"])
    return flags


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path, help="the compare_mixer.sh output folder")
    p.add_argument("--chunk", type=int, default=100, help="examples per chunk of the mixer's evaluation")
    args = p.parse_args()
    dirs = sorted((args.out / "adaptive").glob(".chunks-*"))
    if not dirs:
        raise SystemExit(f"no finished chunks under {args.out / 'adaptive'}")
    mixer = mixer_flags(dirs[0], args.chunk)
    positions = sorted(mixer)
    robust = sum(mixer[i] for i in positions)
    print(f"mixer: {robust}/{len(positions)} robust on the {len(positions) // args.chunk} finished chunks")
    for report in sorted(args.out.glob("*/*.json")):
        if report.parent.name in ("adaptive", "compare"):
            continue
        d = json.loads(report.read_text())
        flags = d.get("robust_per_example")
        if flags is None or len(flags) <= positions[-1]:
            continue
        other = [bool(flags[i]) for i in positions]
        clean, n_clean = d.get("clean_accuracy_full_split", d["clean_accuracy"]), d.get("n_full_split", d["n"])
        only_mixer = sum(mixer[i] and not o for i, o in zip(positions, other))
        only_other = sum(o and not mixer[i] for i, o in zip(positions, other))
        print(f"{report.parent.name}/{report.stem}: {sum(other)}/{len(positions)} robust here "
              f"({100 * d['robust_accuracy']:.1f}% on all {d['n']}), clean {100 * clean:.2f}% on {n_clean}; only the mixer {only_mixer}, only this model {only_other}")


if __name__ == "__main__":
    main()
