"""docs/security.md and the code that cites it stay in step: every cited case exists, no
citation points outside the repository, and every test a case names exists."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "security.md"
SCANNED = ("authserver", "tests")

CASE_ID = r"(?:§\d+|[A-Z]\d*)"
ID_LIST = CASE_ID + r"(?:(?:\s*,\s*|\s*/\s*|\s+and\s+|,\s*and\s+)" + CASE_ID + r")*"
# Built from pieces so that this file does not cite anything itself.
DOC_NAME = "docs/" + "security.md"
CITATION = re.compile(re.escape(DOC_NAME) + r"\s+(" + ID_LIST + r")\b")
BARE_CITATION = re.compile(r"(?<![\w/])" + "SECURITY" + r"\.md\s+" + CASE_ID + r"\b")
TEST_REFERENCE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def documented_ids() -> set[str]:
    text = DOC.read_text(encoding="utf-8")
    cases = re.findall(r"^- (" + CASE_ID + r") ", text, flags=re.MULTILINE)
    sections = re.findall(r"^### ([A-Z])\. ", text, flags=re.MULTILINE)
    conventions = re.findall(r"^## (§\d+) ", text, flags=re.MULTILINE)
    return {*cases, *sections, *conventions}


def scanned_files() -> list[Path]:
    return sorted(p for folder in SCANNED for p in (ROOT / folder).rglob("*.py"))


@cache
def functions_in(path: Path) -> frozenset[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return frozenset(
        node.name
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    )


def test_the_document_numbers_every_case_once_in_order_under_its_section() -> None:
    """Case numbers run 1, 2, 3 ... through the document, and each case carries the letter
    of the section it sits in, so a new section only has to continue the count."""
    section = None
    numbered: list[tuple[str, int]] = []
    letters: list[str] = []
    for line in DOC.read_text(encoding="utf-8").splitlines():
        if heading := re.match(r"^### ([A-Z])\. ", line):
            section = heading.group(1)
            letters.append(section)
        elif case := re.match(r"^- ([A-Z])(\d+) ", line):
            assert case.group(1) == section, f"{case.group(0)} is filed under section {section}"
            numbered.append((case.group(1), int(case.group(2))))
    assert letters == sorted(set(letters)), f"sections out of order or repeated: {letters}"
    assert [n for _, n in numbered] == list(range(1, len(numbered) + 1)), "cases numbered 1..N"
    assert len(numbered) >= 108


def test_every_citation_names_a_documented_case() -> None:
    known = documented_ids()
    missing = []
    for path in scanned_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for match in CITATION.finditer(line):
                for case in re.findall(CASE_ID, match.group(1)):
                    if case not in known:
                        missing.append(f"{path.relative_to(ROOT)}:{number}: {case}")
    assert not missing, "cited but not in docs/security.md:\n" + "\n".join(missing)


def test_no_citation_points_outside_the_repository() -> None:
    bare = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in scanned_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if BARE_CITATION.search(line) or ("../" + "shared") in line
    ]
    assert not bare, f"cite cases as `{DOC_NAME} <id>`:\n" + "\n".join(bare)


def test_every_test_a_case_names_exists() -> None:
    text = DOC.read_text(encoding="utf-8")
    references = TEST_REFERENCE.findall(text)
    assert len(references) > 100
    missing = [
        f"{file}::{name}"
        for file, name in references
        if not (ROOT / file).is_file() or name not in functions_in(ROOT / file)
    ]
    assert not missing, "docs/security.md names tests that do not exist:\n" + "\n".join(missing)


def test_the_checker_reads_every_form_of_citation() -> None:
    line = f"see {DOC_NAME} H65, K84 and {DOC_NAME} J74/F52, §0 and A"
    found = [c for m in CITATION.finditer(line) for c in re.findall(CASE_ID, m.group(1))]
    assert found == ["H65", "K84", "J74", "F52", "§0", "A"]
    assert BARE_CITATION.search("as " + "SECURITY" + ".md B30 says")
    assert not BARE_CITATION.search(f"as {DOC_NAME} B30 says")
