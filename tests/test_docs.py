"""The documentation stays short, current and equal to its sources (issue 32).

README.md is for users: at most 250 lines, none over 200 characters, no dated diary entries (history lives in
CHANGELOG.md). docs/benchmarks.md is generated from benchmarks/results/ by scripts/build_docs.py. Every local link
in README.md and docs/ points at a file that exists.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DATE = re.compile(r"\b(19|20)\d\d-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])\b")
MAX_LINES, MAX_CHARS = 250, 200


@pytest.fixture(scope="module")
def build_docs():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_docs
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    return build_docs


def readme_problems(text: str) -> list[str]:
    """What makes ``text`` unfit as the README: too many lines, long lines, date stamps."""
    lines = text.splitlines()
    out = []
    if len(lines) > MAX_LINES:
        out.append(f"{len(lines)} lines (at most {MAX_LINES})")
    out += [f"line {i}: {len(s)} characters (at most {MAX_CHARS})" for i, s in enumerate(lines, 1) if len(s) > MAX_CHARS]
    out += [f"line {i}: date stamp {m.group(0)} (history belongs in CHANGELOG.md)"
            for i, s in enumerate(lines, 1) for m in DATE.finditer(s)]
    return out


def test_readme_is_short_and_undated():
    assert readme_problems(README.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("text, problem", [
    ("x\n" * (MAX_LINES + 1), "lines"),
    ("a" * (MAX_CHARS + 1) + "\n", "characters"),
    ("Since 2026-12-02 the prior is rescaled.\n", "date stamp 2026-12-02"),
])
def test_readme_check_catches_each_problem(text, problem):
    assert any(problem in p for p in readme_problems(text))
    assert readme_problems("short line, no date, version 0.1.0, 2 mm, 2026 brains\n") == []


def test_readme_keeps_the_two_commands_and_ci_runs_the_test_command():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Two commands"):]
    block = section[section.index("```bash"):section.index("```", section.index("```bash") + 3)]
    assert ('python3 -m venv .venv && .venv/bin/pip install torch==2.13.0 -e ".[all]" && '
            ".venv/bin/medvae demo -o demo_out") in block
    assert "\nbash .ci/run\n" in block
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q -ra" in ci and "ruff check" in ci


def test_readme_has_the_real_scan_placeholder_and_honest_limits():
    text = README.read_text(encoding="utf-8")
    assert "## Results on real scans" in text
    assert text.index("## Results on real scans") < text.index("## Two commands")  # near the top
    limits = text[text.index("## Limitations"):]
    assert "synthetic" in limits and "no better than classical methods" in limits and "T1 only" in limits
    results = text[text.index("## Results on real scans"):text.index("## Two commands")]
    assert "FAIL" in results and "PASS" in results  # missed targets are said where they are


def test_readme_shows_every_screenshot():
    text = README.read_text(encoding="utf-8")
    shots = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs" / "screenshots").glob("*.png"))
    assert shots and [s for s in shots + ["docs/demo_montage.png"] if f"]({s})" not in text] == []


def _local_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    targets = re.findall(r"\]\(([^)\s]+)\)", text)
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+:", t) and not t.startswith("#")]


@pytest.mark.parametrize("page", ["README.md", "CHANGELOG.md", *sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))])
def test_local_links_point_at_existing_files(page):
    path = ROOT / page
    missing = [t for t in _local_links(path) if t and not (path.parent / t).exists()]
    assert missing == []


def test_contract_md_is_gone_and_nothing_names_it():
    assert not (ROOT / "CONTRACT.md").exists()
    names = [p for d in ("src", "tests", "scripts", "benchmarks", "docs") for p in (ROOT / d).rglob("*")
             if p.suffix in {".py", ".md", ".yaml", ".toml"} and p.name != "test_docs.py"
             and "CONTRACT.md" in p.read_text(encoding="utf-8", errors="replace")]
    names += [p for p in (ROOT / "README.md", ROOT / "pyproject.toml") if "CONTRACT.md" in p.read_text(encoding="utf-8")]
    assert names == []


def test_benchmarks_page_equals_its_generated_content(build_docs):
    page = ROOT / "docs" / "benchmarks.md"
    assert page.read_text(encoding="utf-8") == build_docs.render(), (
        "docs/benchmarks.md is stale: run `python scripts/build_docs.py`")


def test_benchmarks_page_holds_every_table_verbatim_under_its_heading(build_docs):
    text = build_docs.render()
    assert set(build_docs.SOURCES) >= {"quality_real", "speed_real", "quality", "speed"}
    for name, path in build_docs.SOURCES.items():
        table = path.read_text(encoding="utf-8").strip()
        heading = build_docs.SECTIONS[name].splitlines()[0]
        assert heading.startswith("## ") and table in text
        assert text.index(heading) < text.index(table)


def test_build_docs_check_and_write(build_docs, tmp_path, monkeypatch, capsys):
    q, s = tmp_path / "quality.md", tmp_path / "speed.md"
    q.write_text("Command: `python benchmarks/quality.py`\n\n| a |\n|---|\n| 1 |\n", encoding="utf-8")
    s.write_text("Command: `python benchmarks/speed.py`\n", encoding="utf-8")
    page = tmp_path / "benchmarks.md"
    monkeypatch.setattr(build_docs, "SOURCES", {"quality": q, "speed": s})
    monkeypatch.setattr(build_docs, "PAGE", page)
    monkeypatch.setattr(build_docs, "ROOT", tmp_path)
    text = build_docs.render()
    assert "| 1 |" in text and text.index("## Quality") < text.index("## Speed")
    assert build_docs.main(["--check"]) == 1  # no page yet
    assert "stale" in capsys.readouterr().err
    assert build_docs.main([]) == 0 and page.read_text(encoding="utf-8") == text
    assert build_docs.main(["--check"]) == 0
    page.write_text(text + "edited by hand\n", encoding="utf-8")
    assert build_docs.main(["--check"]) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temporary file left


@pytest.mark.parametrize("content, message", [(None, "not found"), ("  \n", "empty")])
def test_build_docs_refuses_a_missing_or_empty_table(build_docs, tmp_path, capsys, monkeypatch, content, message):
    q, s = tmp_path / "quality.md", tmp_path / "speed.md"
    s.write_text("Command: x\n", encoding="utf-8")
    if content is not None:
        q.write_text(content, encoding="utf-8")
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        build_docs.render({"quality": q, "speed": s})
    monkeypatch.setattr(build_docs, "SOURCES", {"quality": q, "speed": s})
    monkeypatch.setattr(build_docs, "PAGE", tmp_path / "benchmarks.md")
    assert build_docs.main([]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "benchmarks.md").exists()
