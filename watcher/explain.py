"""`check-config --explain PATH`: which pipeline takes a file, or why none does, told by the
filter and the file checks the watcher itself uses (never a second set of rules)."""

from __future__ import annotations

import os
from pathlib import Path

from watcher.config import PipelineConfig, Settings, pipeline_label
from watcher.files import FileStat, regular_file
from watcher.filters import as_text


def explain(settings: Settings, path: Path) -> tuple[bool, list[str]]:
    """(some pipeline takes it, a line per pipeline saying whether it does or why not)."""
    absolute = Path(os.path.abspath(path))
    # The folders above resolved, the file itself not: a symlink is judged as the watcher does.
    located = Path(os.path.realpath(absolute.parent)) / absolute.name
    verdicts = [
        (pipeline_label(index, pipeline.name), verdict(pipeline, located))
        for index, pipeline in enumerate(settings.pipelines)
    ]
    lines = [f"  {label}: {text}" for label, (_, text) in verdicts]
    taken = any(taken for _, (taken, _) in verdicts)
    return taken, [f"{as_text(str(absolute))}:", *lines]


def verdict(pipeline: PipelineConfig, located: Path) -> tuple[bool, str]:
    """(this pipeline takes the file at `located`, what it does with it or why not)."""
    why_not = _passed_over(pipeline, located)
    if isinstance(why_not, str):
        return False, f"not taken: {why_not}"
    if why_not.size > pipeline.max_file_bytes:
        limit = pipeline.max_file_bytes
        return True, f"taken, but larger than max_file_bytes ({limit}): it gets an error file"
    return True, "takes it"


def _passed_over(pipeline: PipelineConfig, located: Path) -> FileStat | str:
    """Why this pipeline passes over the file at `located`; its stat if it takes it."""
    root = pipeline.watch_dir.resolve()
    if located == root or not located.is_relative_to(root):
        return f"outside its watch_dir {as_text(str(root))}"
    relative = located.relative_to(root).as_posix()
    if not pipeline.recursive and "/" in relative:
        return "in a subfolder, and recursive = false"
    passed_over = pipeline.file_filter().passed_over(relative)
    if passed_over is not None:
        return passed_over.reason
    return regular_file(
        root, str(root / relative), lambda folder: os.path.realpath(folder) == folder
    )
