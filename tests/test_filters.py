from __future__ import annotations

import pytest

from watcher.config import DEFAULT_INCLUDE
from watcher.filters import FileFilter

BESIDE = FileFilter(include=tuple(DEFAULT_INCLUDE))
ELSEWHERE = FileFilter(include=(*DEFAULT_INCLUDE, "*.json"), results_beside_sources=False)
WITH_EXCLUDES = FileFilter(include=tuple(DEFAULT_INCLUDE), exclude=("drafts/*", "*-copy.pdf"))


@pytest.mark.parametrize(
    ("file_filter", "path", "taken"),
    [
        (BESIDE, "a.pdf", True),
        (BESIDE, "Scan 2026-11-01.PDF", True),
        (BESIDE, "sub/dir/invoice.png", True),
        (BESIDE, "notes.xyz", False),  # not a document type the API takes
        (BESIDE, ".hidden.pdf", False),
        (BESIDE, ".a.pdf.json.1a2b3c4d.unstract-watcher.tmp", False),  # our own temp file
        (BESIDE, "a.pdf.tmp", False),
        (BESIDE, "a.pdf.part", False),
        (BESIDE, "a.pdf.crdownload", False),
        (BESIDE, "~$report.docx", False),
        (BESIDE, ".~lock.report.odt#", False),
        (BESIDE, "report.docx~", False),
        (BESIDE, "Thumbs.db", False),
        (BESIDE, ".git/objects/a.pdf", False),  # inside a dot folder
        (BESIDE, "@eaDir/a.pdf", False),
        (BESIDE, "a.pdf.json", False),  # our own result beside its source
        (BESIDE, "a.pdf.error.json", False),
        (ELSEWHERE, "data.json", True),  # results go elsewhere, so JSON can be an input
        (ELSEWHERE, "a.pdf.error.json", False),
        (WITH_EXCLUDES, "drafts/a.pdf", False),
        (WITH_EXCLUDES, "final/a.pdf", True),
        (WITH_EXCLUDES, "final/a-copy.pdf", False),
    ],
)
def test_which_files_are_taken(file_filter: FileFilter, path: str, taken: bool) -> None:
    assert file_filter.takes(path) is taken


@pytest.mark.parametrize(
    ("path", "excluded"),
    [("drafts", True), ("final", False), (".cache", True), ("final/.snapshots", True)],
)
def test_which_folders_are_excluded(path: str, excluded: bool) -> None:
    assert WITH_EXCLUDES.excludes_dir(path) is excluded


def test_text_results_beside_sources_are_not_inputs() -> None:
    text = FileFilter(include=tuple(DEFAULT_INCLUDE), text_results=True)
    assert not text.takes("scan.pdf.txt")  # the text we wrote for scan.pdf
    assert text.takes("notes.txt")  # a text document of the user's
    assert not text.takes("sub/a.png.txt")
