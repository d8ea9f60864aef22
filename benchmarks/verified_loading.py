"""Cost of checking the weights' sha256 on load, against loading without the check.

Prints  time(load the shipped pair and its mixer, verified) / time(the same, unverified), both measured in
this one run, interleaved, median over repeats. Goal: < 1.05 (the check reads the file once, as the load does).

    .venv/bin/python benchmarks/verified_loading.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import time

from adasmooth.io import load_model
from adasmooth.mixer import load_adaptive
from adasmooth.pretrained import pretrained_dir


def load_all(verify: bool) -> float:
    folder = pretrained_dir() / "fashion-mnist"
    t0 = time.perf_counter()
    std = load_model(folder / "standard", verify=verify)[0]
    rob = load_model(folder / "adversarial", verify=verify)[0]
    load_adaptive(folder / "mixer", std, rob, verify=verify)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    load_all(True), load_all(False)  # warm the page cache and the imports
    on, off = [], []
    for _ in range(args.repeats):
        on.append(load_all(True))
        off.append(load_all(False))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"load shipped pair + mixer: verified {1000 * m_on:.1f} ms, unverified {1000 * m_off:.1f} ms, "
          f"ratio {m_on / m_off:.3f} (goal < 1.05)")


if __name__ == "__main__":
    main()
