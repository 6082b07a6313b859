from __future__ import annotations

import pytest

from watcher.config import DEFAULT_INCLUDE
from watcher.filters import FileFilter

BESIDE = FileFilter(include=tuple(DEFAULT_INCLUDE))
ELSEWHERE = FileFilter(include=(*DEFAULT_INCLUDE, "*.json"), results_beside_sources=False)
WITH_EXCLUDES = FileFilter(include=tuple(DEFAULT_INCLUDE), exclude=("drafts/*", "*-copy.pdf"))
TEXT = FileFilter(include=tuple(DEFAULT_INCLUDE), text_results=True)


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


ARCHIVE = FileFilter(include=tuple(DEFAULT_INCLUDE), exclude=("archive",))
ARCHIVE_SLASH = FileFilter(include=tuple(DEFAULT_INCLUDE), exclude=("archive/",))


@pytest.mark.parametrize(
    ("file_filter", "path", "taken"),
    [
        (ARCHIVE, "archive/processed/a.pdf", False),  # under an excluded folder
        (ARCHIVE, "archive/a.pdf", False),
        (ARCHIVE, "sub/archive/a.pdf", False),  # no `/`: matches a folder name at any depth
        (ARCHIVE, "archived/a.pdf", True),
        (ARCHIVE, "archive.pdf", True),
        (ARCHIVE_SLASH, "archive/processed/a.pdf", False),
        (ARCHIVE_SLASH, "sub/archive/a.pdf", True),  # with `/`: anchored at watch_dir
        (WITH_EXCLUDES, "drafts/old/a.pdf", False),
    ],
)
def test_files_under_excluded_folders_are_not_taken(
    file_filter: FileFilter, path: str, taken: bool
) -> None:
    assert file_filter.takes(path) is taken


@pytest.mark.parametrize("file_filter", [ARCHIVE, ARCHIVE_SLASH, WITH_EXCLUDES, BESIDE])
@pytest.mark.parametrize(
    "folder", ["archive", "archive/processed", "Archive/failed", "drafts", "drafts/x", ".cache"]
)
def test_an_excluded_folder_holds_nothing_that_is_taken(
    file_filter: FileFilter, folder: str
) -> None:
    if file_filter.excludes_dir(folder):
        assert not file_filter.takes(f"{folder}/a.pdf")
        assert not file_filter.takes(f"{folder}/deeper/a.pdf")
        assert file_filter.excludes_dir(f"{folder}/deeper")
    else:
        assert file_filter.takes(f"{folder}/a.pdf")


def test_both_spellings_exclude_the_archive_folder() -> None:
    assert ARCHIVE.excludes_dir("archive") and ARCHIVE_SLASH.excludes_dir("archive")
    assert ARCHIVE.excludes_dir("archive/processed") and ARCHIVE_SLASH.excludes_dir("archive/")


def test_text_results_beside_sources_are_not_inputs() -> None:
    text = FileFilter(include=tuple(DEFAULT_INCLUDE), text_results=True)
    assert not text.takes("scan.pdf.txt")  # the text we wrote for scan.pdf
    assert text.takes("notes.txt")  # a text document of the user's
    assert not text.takes("sub/a.png.txt")
    assert not text.takes("scan.pdf.17.txt")  # an earlier scan.pdf's text, kept aside
    assert text.takes("minutes.2024.txt")  # a text document whose name has a number


@pytest.mark.parametrize(
    ("file_filter", "path", "reason", "by_pattern"),
    [
        (BESIDE, "notes.xyz", "not matched by any include pattern", True),
        (BESIDE, "a.pdf.part", "a hidden, temporary or system file (built-in rule)", False),
        (BESIDE, ".git/objects/a.pdf", "in the folder '.git': a hidden or system folder", False),
        (BESIDE, "a.pdf.json", "a .json file beside the sources, where results are written", False),
        (BESIDE, "a.pdf.error.json", "an error file the daemon wrote", False),
        (
            WITH_EXCLUDES,
            "Drafts/a.pdf",
            "in the folder 'drafts': excluded by pattern 'drafts/*'",
            True,
        ),
        (WITH_EXCLUDES, "final/A-copy.pdf", "excluded by pattern '*-copy.pdf'", True),
        (TEXT, "scan.pdf.txt", "the text result of the document it is named after", False),
    ],
)
def test_why_a_file_is_passed_over(
    file_filter: FileFilter, path: str, reason: str, by_pattern: bool
) -> None:
    passed_over = file_filter.passed_over(path)
    assert passed_over is not None and passed_over.reason.startswith(reason)
    assert passed_over.by_pattern is by_pattern
    assert not file_filter.takes(path)
    assert file_filter.passed_over("final/a.pdf") is None
