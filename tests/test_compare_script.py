"""scripts/compare_mixer.sh: which evaluations it runs, over how many lanes, and when it compares.

The Python it calls is a stub that records each call and writes the report an evaluation would, so the test
checks the script's plan (names, flags, skipping, the reports handed to `compare`) in a second."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUB = r"""#!/usr/bin/env bash
# a stand-in for `python -m adasmooth`: log the call, write what `evaluate` would write
shift 2   # -m adasmooth
cmd=$1; shift
echo "$cmd $*" >> "$LOG"
[ "$cmd" = evaluate ] || exit 0
out=""; names=(); fail=0
while [ $# -gt 0 ]; do
  case $1 in
    --out) out=$2; shift ;;
    --alpha) names+=("mixed-alpha$2") ;;
    --mixer) names+=("$(basename "$2")") ;;
    --checkpoint) names+=("$(basename "$2")") ;;
  esac
  shift
done
[ ${#names[@]} -gt 0 ] || names=(standard adversarial)
case $out in *"$FAIL_ON"*) [ -n "$FAIL_ON" ] && exit 1 ;; esac
mkdir -p "$out"
for n in "${names[@]}"; do echo '{}' > "$out/$n.json"; done
"""


def _run(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    stub = tmp_path / "py"
    stub.write_text(STUB)
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    full = {**os.environ, "PY": str(stub), "LOG": str(tmp_path / "calls.log"), "N": "4", "ALPHAS": "0.9 0.8",
            "S_H": "1 2", "FAIL_ON": "", **env}
    return subprocess.run(["bash", str(ROOT / "scripts/compare_mixer.sh"), str(tmp_path / "out"), "some/mixer"],
                          check=False, env=full, capture_output=True, text=True, timeout=60)


def _calls(tmp_path: Path) -> list[str]:
    return (tmp_path / "calls.log").read_text().splitlines()


def test_a_subset_runs_alone_and_compare_waits_for_the_rest(tmp_path):
    res = _run(tmp_path, MODELS="bases alpha0.8-sh2", JOBS="2")
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    assert len(calls) == 2 and all(c.startswith("evaluate ") for c in calls)
    assert any("--alpha 0.8 --robust-scale 2" in c for c in calls)
    assert "still to evaluate: adaptive alpha0.9-sh1 alpha0.8-sh1 alpha0.9-sh2" in res.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["alpha0.8-sh2", "bases"]


def test_lanes_share_the_plan_done_models_are_skipped_then_compare_gets_every_report(tmp_path):
    assert _run(tmp_path, MODELS="alpha0.9-sh1").returncode == 0
    res = _run(tmp_path, JOBS="3", STANDARD="pretrained/fashion-mnist/standard-wide",
               ROBUST="pretrained/fashion-mnist/adversarial")
    assert res.returncode == 0, res.stderr
    calls = _calls(tmp_path)
    evaluations = [c for c in calls if c.startswith("evaluate ")]
    assert len(evaluations) == 1 + 5  # alpha0.9-sh1 first, then the bases, the mixer and three fixed mixtures
    assert sum("--alpha 0.9 --robust-scale 1" in c for c in evaluations) == 1
    assert all("--robust pretrained/fashion-mnist/adversarial" in c for c in evaluations[1:] if "--alpha" in c)
    (compare,) = [c for c in calls if c.startswith("compare ")]
    out = tmp_path / "out"
    assert f"standard={out}/bases/standard-wide.json" in compare
    assert f"robust={out}/bases/adversarial.json" in compare
    for name in ("alpha0.9-sh1", "alpha0.8-sh1", "alpha0.9-sh2", "alpha0.8-sh2"):
        assert f"{name}={out}/{name}/mixed-alpha{name[5:8]}.json" in compare
    assert f"adaptive={out}/adaptive/mixer.json" in compare


def test_a_failed_evaluation_fails_the_script_and_is_not_marked_done(tmp_path):
    res = _run(tmp_path, JOBS="2", FAIL_ON="alpha0.8-sh1")
    assert res.returncode != 0
    assert not (tmp_path / "out/alpha0.8-sh1/done").exists()
    assert (tmp_path / "out/alpha0.9-sh2/done").exists()
    assert not any(c.startswith("compare ") for c in _calls(tmp_path))
    assert "still to evaluate:" in res.stdout and "alpha0.8-sh1" in res.stdout.split("still to evaluate:")[1]
