"""The docs a user reads: short enough, every command they name parses, every link resolves, and no
tracked file speaks of how the work was organised."""

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from adasmooth.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "docs" / "results.md", ROOT / "pretrained" / "README.md", ROOT / "CHANGELOG.md",
        *sorted((ROOT / "pretrained" / "fashion-mnist").glob("*.md"))]


def _subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)


def _code_commands(text: str) -> list[str]:
    """`adasmooth ...` lines of fenced and indented code blocks, continuation lines joined."""
    lines = []
    in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if in_fence or line.startswith("    "):
            lines.append(line.strip())
    joined = " ".join(ln[:-1] if ln.endswith("\\") else ln + "\n" for ln in lines)
    out = []
    for ln in joined.splitlines():
        ln = ln.split("#")[0].strip()
        m = re.search(r"(?:^|\s|/)adasmooth\s+(?!\S*\.py)(.*)$", ln)
        if m and not ln.startswith(("from ", "import ")) and "=" not in ln.split("adasmooth")[0]:
            out.append(m.group(1).split(">")[0].strip())
    return out


def test_readme_and_pretrained_index_are_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 300
    assert len((ROOT / "pretrained" / "README.md").read_text().splitlines()) <= 150


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_in_the_docs_parses(doc):
    known = _subcommands()
    text = doc.read_text()
    for name in re.findall(r"`adasmooth ([a-z-]+)", text):
        assert name in known, f"{doc.name} names `adasmooth {name}`, which does not exist"
    parser = build_parser()
    for cmd in _code_commands(text):
        args = shlex.split(cmd.replace("-m adasmooth", ""))
        if args and args[0] in ("-m",):
            continue
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{doc.name}: `adasmooth {cmd}` does not parse")


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    for target in re.findall(r"\]\(([^)#:]+)\)", doc.read_text()):
        assert (doc.parent / target).exists(), f"{doc.name} links to {target}, which does not exist"


def test_no_tracked_file_speaks_of_how_the_work_was_organised():
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    pattern = re.compile(r"\bsessions? \d|\bsession-\d|\bissue \d|\bissues? #\d|\bthis task\b|\bclosing note\b",
                         re.IGNORECASE)
    hits = []
    for name in files:
        path = ROOT / name
        if path.suffix in (".safetensors", ".png", ".gz") or name == "tests/test_docs.py" or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        hits += [f"{name}:{i}" for i, line in enumerate(text.splitlines(), 1) if pattern.search(line)]
    assert not hits, f"process words in {hits[:10]}"
