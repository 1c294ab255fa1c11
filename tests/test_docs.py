"""The README and docs/ hold together: their tables are whole and their relative links land.

Figures are added to these documents run after run, often a column at a time;
a cell pasted into the wrong table, or a link to a heading since renamed,
misleads a reader without breaking anything else.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_DIVIDER = re.compile(r"^\|[-| :]+\|$")
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def cells(row: str) -> int:
    """Cells in a table row: pipes outside code spans and escapes, less the outer one."""
    plain = re.sub(r"`[^`]*`", "code", row).replace("\\|", "pipe")
    return plain.count("|") - 1


def tables(text: str) -> list[tuple[int, list[tuple[int, str]]]]:
    """Each table as (header line number, [(line number, row), ...])."""
    lines = text.split("\n")
    found = []
    index = 0
    while index < len(lines) - 1:
        if lines[index].startswith("|") and _DIVIDER.match(lines[index + 1]):
            rows = []
            cursor = index + 2
            while cursor < len(lines) and lines[cursor].startswith("|"):
                rows.append((cursor + 1, lines[cursor]))
                cursor += 1
            found.append((index + 1, rows))
            index = cursor
        else:
            index += 1
    return found


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors for a document's headings (lower case, punctuation dropped, spaces to
    hyphens, repeats numbered)."""
    anchors: set[str] = set()
    seen: dict[str, int] = {}
    fenced = False
    for line in text.split("\n"):
        if line.startswith("```"):
            fenced = not fenced
        match = None if fenced else re.match(r"^#{1,6}\s+(.*)$", line)
        if match is None:
            continue
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1).replace("`", ""))
        slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        repeat = seen.get(slug, 0)
        seen[slug] = repeat + 1
        anchors.add(slug if repeat == 0 else f"{slug}-{repeat}")
    return anchors


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_table_row_has_as_many_cells_as_its_header(document: Path) -> None:
    text = document.read_text(encoding="utf-8")
    lines = text.split("\n")
    ragged = [
        f"line {number}: {cells(row)} cells, its header (line {header}) {cells(lines[header - 1])}"
        for header, rows in tables(text)
        for number, row in rows
        if cells(row) != cells(lines[header - 1])
    ]
    assert not ragged, "\n".join(ragged)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_relative_link_lands_on_a_file_and_heading_that_exist(document: Path) -> None:
    broken = []
    for match in _LINK.finditer(document.read_text(encoding="utf-8")):
        link = match.group(1)
        if re.match(r"^[a-z][a-z+.-]*:", link):  # http:, https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = (document.parent / path).resolve() if path else document
        if not target.exists():
            broken.append(f"{link}: no such file")
        elif anchor and target.suffix == ".md" and anchor not in heading_anchors(target.read_text("utf-8")):
            broken.append(f"{link}: no such heading in {target.name}")
    assert not broken, "\n".join(broken)


def test_a_cell_pasted_into_the_wrong_table_is_found() -> None:
    text = "| figure | before | after |\n|---|---|---|\n| wall | 82 s | 60 s |\n| load | 2.2 | 3.3 | 0.7 |\n"
    [(header, rows)] = tables(text)
    assert [cells(row) for _, row in rows] == [3, 4] and header == 1
    assert cells("| `a | b` | c \\| d |") == 2
    assert {"run-16-alignment-with-several-workers", "the-sinks-work"} == heading_anchors(
        "### Run 16: alignment with several workers\n```\n# not a heading\n```\n## The sink's work\n"
    )
