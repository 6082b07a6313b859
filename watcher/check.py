"""`check-config`: what the config says, every problem of it in one run (the loader collects
them), and with `--online` one harmless call per pipeline that proves its URL and key: no
execution is created and no credits are spent (see each backend's `check`)."""

from __future__ import annotations

import stat
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

from watcher.api_config import is_credential_elsewhere, key_file_path
from watcher.backend import CheckOutcome
from watcher.backends import build_backend
from watcher.config import PipelineConfig, Settings, labelled_pipelines, pipeline_label
from watcher.setup_check import creation_notes


def summary(settings: Settings, path: Path) -> list[str]:
    """The lines check-config prints once the file loaded: notes, warnings, pipelines."""
    notes = credential_notes(settings) + creation_notes(labelled_pipelines(settings))
    lines = [f"note: {note}" for note in notes]
    lines += [f"warning: {warning}" for warning in secret_warnings(settings, path)]
    for index, pipeline in enumerate(settings.pipelines):
        api = pipeline.api
        lines.append(
            f"{pipeline_label(index, pipeline.name)}: {pipeline.watch_dir} -> {api.kind} {api.url}"
        )
    return [*lines, f"database: {redacted(settings.database.url)}"]


def online(settings: Settings) -> tuple[bool, list[str]]:
    """Ask each pipeline's API, all at once; (every pipeline answered well, a line each)."""
    pipelines = list(enumerate(settings.pipelines))
    with ThreadPoolExecutor(max_workers=min(8, len(pipelines))) as pool:
        found = list(pool.map(lambda item: _probe(item[1]), pipelines))
    lines, ok = [], True
    for (index, pipeline), outcome in zip(pipelines, found, strict=True):
        label = f"{pipeline_label(index, pipeline.name)} at {pipeline.api.url}"
        if outcome is None:
            lines.append(
                f"{label}: not checked: its key comes from systemd LoadCredential=, "
                "which only the service gets"
            )
            continue
        ok = ok and outcome.ok
        lines.append(f"{label}: {'OK' if outcome.ok else 'FAILED'}: {outcome.found}")
    return ok, lines


def _probe(pipeline: PipelineConfig) -> CheckOutcome | None:
    if is_credential_elsewhere(pipeline.api):
        return None
    backend = build_backend(pipeline.api)
    try:
        return backend.check()
    finally:
        backend.close()


def credential_notes(settings: Settings) -> list[str]:
    """The key files check-config leaves to the service: systemd provides them at its start."""
    return [
        f"{pipeline_label(index, pipeline.name)}.api.api_key_file: {pipeline.api.api_key_file} "
        "is provided by systemd LoadCredential= when the service starts; not checked here"
        for index, pipeline in enumerate(settings.pipelines)
        if is_credential_elsewhere(pipeline.api)
    ]


def secret_warnings(settings: Settings, config_path: Path | None) -> list[str]:
    """Keys that people other than the daemon's user can read: worth a warning, not a refusal."""
    warnings = []
    for index, pipeline in enumerate(settings.pipelines):
        api, label = pipeline.api, pipeline_label(index, pipeline.name)
        if api.api_key and config_path is not None and _readable_by_others(config_path):
            warnings.append(
                f"{label}.api.api_key: {config_path} holds a literal API key and is "
                "readable by other users; chmod 600 it or use api_key_env / api_key_file"
            )
        key_file = key_file_path(api.api_key_file) if api.api_key_file else None
        if key_file is not None and _readable_by_others(key_file):
            warnings.append(
                f"{label}.api.api_key_file: the key file is readable by other users; chmod 600 it"
            )
    return warnings


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


def redacted(url: str) -> str:
    """A database URL fit to print: its password masked."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@")
    return url
