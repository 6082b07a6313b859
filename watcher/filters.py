"""Which paths in a drop folder are documents to take: one pure filter, tested over tables.

Patterns use fnmatch on the path relative to the watched folder, lower-cased (`*` also crosses
folders; a pattern without `/` is matched against the file or folder name too). One rule for
exclusion: a file is excluded if it matches, or if any folder above it is excluded.
"""

from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass
from fnmatch import fnmatchcase

# Partial downloads, editor and office lock files, sync-client and OS litter, and our own temp
# files (reliability-notes A6 and D1). They can never be turned off.
BUILTIN_IGNORED_NAMES = (
    ".*",  # dotfiles, including our own `.<name>.<random>.tmp` result temps
    "*.tmp",
    "*.temp",
    "*.part",
    "*.partial",
    "*.filepart",
    "*.crdownload",
    "*.download",
    "~$*",
    ".~lock*",
    "*~",
    "*.swp",
    "*.kate-swp",
    "*_conflict-*",
    "thumbs.db",
    "desktop.ini",
    "icon\r",
)
BUILTIN_IGNORED_DIRS = (".*", "@eadir", "__macosx", "$recycle.bin", "lost+found")
RESULT_SUFFIX = ".json"
ERROR_SUFFIX = ".error.json"


def as_text(path: str) -> str:
    """A path as text for logs, JSON and the database: bytes that are not UTF-8 become \\xNN.

    Linux file names are bytes; Python hands undecodable ones over with surrogate escapes, which
    no JSON encoder, terminal or database text column accepts.
    """
    return path.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="backslashreplace")


@dataclass(frozen=True)
class PassedOver:
    """Why a file is not a document to take."""

    reason: str
    by_pattern: bool = False  # the pipeline's include or exclude decided, not a built-in rule


HIDDEN_OR_TEMPORARY = PassedOver("a hidden, temporary or system file (built-in rule)")
OUR_ERROR_FILE = PassedOver("an error file the daemon wrote")
OUR_RESULT_FILE = PassedOver("a .json file beside the sources, where results are written")
OUR_TEXT_FILE = PassedOver("the text result of the document it is named after")
KEPT_ID = re.compile(r"\.[0-9]+$")  # a.pdf.<job id>: a result kept aside for a reused name
NOT_INCLUDED = PassedOver("not matched by any include pattern", by_pattern=True)
HIDDEN_FOLDER = "a hidden or system folder (built-in rule)"


@dataclass(frozen=True)
class FileFilter:
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    # Results written beside their sources end in .json, so .json is never an input there.
    results_beside_sources: bool = True
    # LLMWhisperer pipelines may also write `<name>.txt`: a .txt named after a document is ours.
    text_results: bool = False

    def takes(self, relative_path: str) -> bool:
        """True if the file at this relative path (with `/` separators) is a document to take."""
        if self.text_results:
            return self.passed_over(relative_path) is None
        return self._passed_over(relative_path) is None  # asked for every file of every scan

    def passed_over(self, relative_path: str) -> PassedOver | None:
        """Why the file at this relative path is not a document to take; None: it is."""
        if self.results_beside_sources and self.text_results and relative_path.endswith(".txt"):
            # a.pdf.txt, or a.pdf.<job id>.txt: an earlier document's text kept aside
            source = KEPT_ID.sub("", relative_path.removesuffix(".txt"))
            if self._passed_over(source) is None:
                return OUR_TEXT_FILE
        return self._passed_over(relative_path)

    def _passed_over(self, relative_path: str) -> PassedOver | None:
        path = relative_path.lower()
        folder, _, name = path.rpartition("/")
        if folder and self.excludes_dir(folder):
            return self._folder_reason_above(folder)
        if _matches_any(name, BUILTIN_IGNORED_NAMES):
            return HIDDEN_OR_TEMPORARY
        if name.endswith(ERROR_SUFFIX):
            return OUR_ERROR_FILE
        if self.results_beside_sources and name.endswith(RESULT_SUFFIX):
            return OUR_RESULT_FILE
        pattern = self._excluding(path, name)
        if pattern is not None:
            return PassedOver(f"excluded by pattern {pattern!r}", by_pattern=True)
        included = _pattern(self._lower(self.include))
        return None if included.match(path) or included.match(name) else NOT_INCLUDED

    def excludes_dir(self, relative_dir: str) -> bool:
        """True if this folder or one above it is excluded: nothing below it is ever taken."""
        return _excludes_dir(self, relative_dir)

    def _folder_reason_above(self, relative_dir: str) -> PassedOver:
        """Why a file in this excluded folder is not taken: the first folder excluded."""
        for folder in _folders_down_to(relative_dir):
            reason = self._folder_reason(folder)
            if reason is not None:
                return PassedOver(f"in the folder {folder!r}: {reason}", reason != HIDDEN_FOLDER)
        raise AssertionError(f"{relative_dir} is not excluded")

    def _folder_reason(self, folder: str) -> str | None:
        """Why this folder (lower-cased) is excluded; None: it is not."""
        name = folder.rpartition("/")[2]
        if _matches_any(name, BUILTIN_IGNORED_DIRS):
            return HIDDEN_FOLDER
        pattern = self._excluding(folder, name)
        # "drafts/*" and "drafts/" name the folder as well as what is in it.
        if pattern is None:
            pattern = next((p for p in self.exclude if fnmatchcase(folder + "/", p.lower())), None)
        return None if pattern is None else f"excluded by pattern {pattern!r}"

    def _excluding(self, path: str, name: str) -> str | None:
        """The exclude pattern (as written) that matches this lower-cased path, if any."""
        for index, pattern in enumerate(self._lower(self.exclude)):
            if fnmatchcase(path, pattern) or ("/" not in pattern and fnmatchcase(name, pattern)):
                return self.exclude[index]
        return None

    @staticmethod
    def _lower(patterns: tuple[str, ...]) -> tuple[str, ...]:
        return _lowered(patterns)


def _matches_any(name: str, patterns: tuple[str, ...]) -> bool:
    return _pattern(patterns).match(name) is not None


@functools.lru_cache(maxsize=64)
def _lowered(patterns: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(p.lower() for p in patterns)


@functools.lru_cache(maxsize=64)
def _pattern(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """fnmatch patterns as one regular expression: asked for every file of every scan, one
    match costs a fraction of one fnmatch per pattern."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)")


@functools.lru_cache(maxsize=4096)
def _excludes_dir(file_filter: FileFilter, relative_dir: str) -> bool:
    # Asked for every file's folder on each scan: a tree of 50 000 files has few folders.
    return any(
        file_filter._folder_reason(folder) is not None for folder in _folders_down_to(relative_dir)
    )


def _folders_down_to(relative_dir: str) -> list[str]:
    """`a/b/c` -> `a`, `a/b`, `a/b/c` (lower-cased)."""
    parts = relative_dir.lower().strip("/").split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
