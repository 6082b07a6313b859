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
class FileFilter:
    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()
    # Results written beside their sources end in .json, so .json is never an input there.
    results_beside_sources: bool = True
    # LLMWhisperer pipelines may also write `<name>.txt`: a .txt named after a document is ours.
    text_results: bool = False

    def takes(self, relative_path: str) -> bool:
        """True if the file at this relative path (with `/` separators) is a document to take."""
        if self.results_beside_sources and self.text_results and relative_path.endswith(".txt"):
            if self._takes(relative_path.removesuffix(".txt")):
                return False
        return self._takes(relative_path)

    def _takes(self, relative_path: str) -> bool:
        path = relative_path.lower()
        folder, _, name = path.rpartition("/")
        if folder and self.excludes_dir(folder):
            return False
        if _matches_any(name, BUILTIN_IGNORED_NAMES) or name.endswith(ERROR_SUFFIX):
            return False
        if self.results_beside_sources and name.endswith(RESULT_SUFFIX):
            return False
        if self._excluded(path, name):
            return False
        included = _pattern(self._lower(self.include))
        return bool(included.match(path) or included.match(name))

    def excludes_dir(self, relative_dir: str) -> bool:
        """True if this folder or one above it is excluded: nothing below it is ever taken."""
        return _excludes_dir(self, relative_dir)

    def _folder_excluded(self, folder: str) -> bool:
        name = folder.rpartition("/")[2]
        if _matches_any(name, BUILTIN_IGNORED_DIRS) or self._excluded(folder, name):
            return True
        # "drafts/*" and "drafts/" name the folder as well as what is in it.
        return any(fnmatchcase(folder + "/", pattern) for pattern in self._lower(self.exclude))

    def _excluded(self, path: str, name: str) -> bool:
        for pattern in self._lower(self.exclude):
            if fnmatchcase(path, pattern) or ("/" not in pattern and fnmatchcase(name, pattern)):
                return True
        return False

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
    parts = relative_dir.lower().strip("/").split("/")
    return any(file_filter._folder_excluded("/".join(parts[: i + 1])) for i in range(len(parts)))
