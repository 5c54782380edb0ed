"""The documentation holds together: every relative link in README.md, docs/ and
benchmarks/README.md reaches a file (and a heading, when it names one), each page opens with
its title and what it is for, the Quickstart keeps its two commands (.ci/run runs the second),
and every setting the service reads is documented."""

from __future__ import annotations

import re
from pathlib import Path

from runner.config import KNOWN_NAMES

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", ROOT / "benchmarks" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text())
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}


def _links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def test_every_relative_link_reaches_a_file_and_its_heading() -> None:
    broken = []
    for page in PAGES:
        for target in _links(page):
            if re.match(r"^[a-z]+:", target):  # https:, mailto: -- not ours to check
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, broken


def test_the_checker_sees_a_broken_link(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text("# T\n\nSee [x](missing.md) and [y](#nowhere).\n")
    assert _links(page) == ["missing.md", "#nowhere"]
    assert not (tmp_path / "missing.md").exists() and "nowhere" not in _anchors(page)


def test_the_readme_links_every_doc_page_and_each_page_says_what_it_is_for() -> None:
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
        title, blank, purpose = page.read_text().splitlines()[:3]
        assert title.startswith("# ") and not blank and purpose, page.name


def test_the_quickstart_is_the_first_section_with_its_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", FENCE.sub("", readme), re.MULTILINE)
    assert sections[0] == "Quickstart"
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", quickstart, re.DOTALL)[0].splitlines()
    assert commands == [
        "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/runner demo",
        "python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' && .venv/bin/pytest",
    ]
    # .ci/run runs the README's test command (quietly).
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(
        r"^python3 -m venv \.venv && \.venv/bin/pip install (-q )?-e '\.\[dev\]' && \.venv/bin/pytest$",
        ci,
        re.M,
    )


def test_every_setting_is_documented() -> None:
    documented = "\n".join(p.read_text() for p in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")])
    missing = sorted(n for n in KNOWN_NAMES if f"`{n}" not in documented)
    assert not missing, f"not documented in README.md or docs/: {missing}"
    table = (ROOT / "docs" / "configuration.md").read_text()
    untabled = sorted(
        n for n in KNOWN_NAMES if n.startswith(("RUNNER_", "DATABASE_")) and f"`{n}" not in table
    )
    assert not untabled, f"missing from docs/configuration.md: {untabled}"
