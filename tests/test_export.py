"""`export`: one table of results, read from the result files, that matches them exactly."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from harness import KEY_ENV, api_key, deployment_url, running_daemon, wait_for, write_config

from watcher.emulator import EmulatorServer
from watcher.emulator.results import ECHO_KEY, FAIL_MARKER
from watcher.flatten import DOCUMENT_COLUMNS, column_order, flatten, result_cells

DOCUMENTS = 240
FAILING = 12
ODD_NAMES = ['Rechnung 5, "März".txt', "=SUM(A1).txt", "line\nbreak.txt", "ключ;tab\t.txt"]


pytestmark = pytest.mark.usefixtures("api_keys")


@pytest.fixture
def execution_seconds() -> float:
    return 0.05


def extraction(index: int) -> dict[str, Any]:
    """A result with nested fields, lists, odd names and values; some fields only some have."""
    invoice: dict[str, Any] = {
        "total": index * 1.25,
        "number": f"INV-{index:05}",
        "paid": index % 2 == 0,
        "due": None,
        "lines": [{"sku": "A-1", "qty": index}, {"sku": 'B "2"', "qty": 0.5}],
        "vendor": {"name": 'Müller, "GmbH"\nBerlin', "vat.id": f"DE{index}", "back\\slash": "x"},
    }
    if index % 10 == 0:
        invoice["discount"] = {"percent": 5, "reason": "=HYPERLINK()"}
    return {"invoice": invoice, "": "empty key", "empty": {}, "ключ значение": "真", "n": "007"}


def drop_documents(drop: Path) -> dict[str, dict[str, Any] | None]:
    """Relative path -> the extraction it should get (None: it fails)."""
    expected: dict[str, dict[str, Any] | None] = {}
    names = [*ODD_NAMES, *(f"batch {i % 3}/doc-{i:04}.txt" for i in range(DOCUMENTS))]
    for index, name in enumerate(names[:DOCUMENTS]):
        path = drop / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if index % (DOCUMENTS // FAILING) == 7:
            path.write_bytes(FAIL_MARKER + f" {index}".encode())
            expected[name] = None
        else:
            path.write_text(json.dumps({ECHO_KEY: extraction(index)}), encoding="utf-8")
            expected[name] = extraction(index)
    return expected


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "watcher.cli", *args, "--config", str(config)]
    return subprocess.run(
        command, capture_output=True, text=True, timeout=120, env={**os.environ, KEY_ENV: api_key()}
    )


def split_column(name: str) -> list[str]:
    """A dotted column name back into its keys (a backslash escapes the next character)."""
    keys, current, escaped = [], "", False
    for char in name:
        if escaped:
            current, escaped = current + char, False
        elif char == "\\":
            escaped = True
        elif char == ".":
            keys, current = [*keys, current], ""
        else:
            current += char
    return [*keys, current]


def rebuild(row: dict[str, Any]) -> dict[str, Any]:
    """The nested result object that a row's result columns describe."""
    result: dict[str, Any] = {}
    for column, value in row.items():
        if column in DOCUMENT_COLUMNS:
            continue
        *parents, leaf = split_column(column)
        folder = result
        for key in parents:
            folder = folder.setdefault(key, {})
        folder[leaf] = value
    return result


def leaves(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(value, dict) and value:
        return {p: v for key, item in value.items() for p, v in leaves(item, (*path, key)).items()}
    return {path: value}


def as_cell(value: Any) -> str:
    """The documented CSV cell of a value: text as is, null empty, anything else JSON."""
    if value is None:
        return ""
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


@pytest.fixture
def finished(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> tuple[Path, Path, dict[str, dict[str, Any] | None]]:
    results = tmp_path / "results"
    config = write_config(
        tmp_path,
        deployment_url(server),
        db_url,
        pipeline={"output_dir": str(results)},
        api={"include_metadata": True, "max_in_flight": 20},
    )
    expected = drop_documents(tmp_path / "drop")
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == DOCUMENTS, timeout=90, what="all results")
    return config, results, expected


def result_files(results: Path) -> dict[str, dict[str, Any]]:
    found = {}
    for path in results.rglob("*.json"):
        document = json.loads(path.read_text(encoding="utf-8"))
        found[document["source"]] = document
    return found


def test_the_exported_tables_match_the_result_files(
    finished: tuple[Path, Path, dict[str, dict[str, Any] | None]], tmp_path: Path
) -> None:
    config, results, expected = finished
    files = result_files(results)
    assert sorted(files) == sorted(expected)
    table = tmp_path / "table.csv"
    done = cli(config, "export", "--output", str(table))
    assert done.returncode == 0, done.stderr
    assert f"exported {DOCUMENTS} document(s)" in done.stderr
    raw = table.read_bytes()
    assert raw.startswith(b"pipeline,source,status,") and b"\r\n" in raw
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8"), newline="")))
    assert sorted(r["source"] for r in rows) == sorted(files)
    header = raw.decode("utf-8").split("\r\n", 1)[0].split(",")
    assert header == column_order(header)  # document columns first, then fields, sorted
    for row in rows:
        document = files[row["source"]]
        assert row["status"] == document["status"] and row["sha256"] == document["sha256"]
        assert row["execution_id"] == document["execution_id"] and row["finished_at"]
        assert row["error"] == (document["error"] or "")
        found = leaves(document["result"]) if document["result"] is not None else {}
        wanted = {path: as_cell(value) for path, value in found.items()}
        cells = {c: v for c, v in row.items() if c not in DOCUMENT_COLUMNS}
        assert {tuple(split_column(c)): v for c, v in cells.items() if v} == {
            path: v for path, v in wanted.items() if v
        }
        if document["status"] == "success":
            usage = document["metadata"]["usage"]
            assert float(row["cost_in_dollars"]) == pytest.approx(usage["cost_in_dollars"])
            assert document["result"]["output"] == expected[row["source"]]
    assert "output.invoice.total" in header and "output.invoice.vendor.vat\\.id" in header
    assert "output.invoice.discount.percent" in header  # a field only every tenth one has

    lines = cli(config, "export", "--format", "jsonl", "--state", "done")
    assert lines.returncode == 0, lines.stderr
    records = [json.loads(line) for line in lines.stdout.splitlines()]
    assert len(records) == DOCUMENTS - FAILING
    for record in records:
        assert rebuild(record) == files[record["source"]]["result"]  # lists stay nested
    again = cli(config, "export", "--format", "jsonl", "--state", "done")
    assert again.stdout == lines.stdout  # the same files give the same table


def test_export_names_the_documents_it_cannot_read(
    finished: tuple[Path, Path, dict[str, dict[str, Any] | None]],
) -> None:
    config, results, expected = finished
    gone = results / "batch 1" / "doc-0010.txt.json"
    gone.unlink()
    broken = results / "batch 2" / "doc-0011.txt.json"
    broken.write_text("{half a file")
    done = cli(config, "export", "--format", "jsonl", "--state", "failed")
    assert done.returncode == 0, done.stderr
    assert {json.loads(line)["status"] for line in done.stdout.splitlines()} == {"failed"}
    everything = cli(config, "export", "--since", "1h")
    assert everything.returncode == 1
    assert "batch 1/doc-0010.txt): no result file" in everything.stderr
    assert "batch 2/doc-0011.txt)" in everything.stderr and "not valid JSON" in everything.stderr
    assert "2 could not be read" in everything.stderr
    sources = {r["source"] for r in csv.DictReader(io.StringIO(everything.stdout, newline=""))}
    assert sources == set(expected) - {"batch 1/doc-0010.txt", "batch 2/doc-0011.txt"}
    unknown = cli(config, "export", "--pipeline", "nope")
    assert unknown.returncode == 2 and "--pipeline nope" in unknown.stderr


@pytest.mark.parametrize(
    ("result", "cells"),
    [
        ({"a": {"b": 1, "c.d": [1, 2]}}, {"a.b": 1, "a.c\\.d": [1, 2]}),
        ({"source": "x", "result": {"k": None}}, {"result.source": "x", "result.result.k": None}),
        ({"e": {}, "": {"\\": True}}, {"e": {}, ".\\\\": True}),
        ("plain text", {"result": "plain text"}),
        (None, {}),
    ],
)
def test_fields_become_columns_that_name_one_place_each(result: Any, cells: dict[str, Any]) -> None:
    assert result_cells(result) == cells


def test_flatten_keeps_lists_whole() -> None:
    assert flatten({"lines": [{"qty": 1}]}, "output") == {"output.lines": [{"qty": 1}]}


def test_a_version_replaced_by_a_fixed_one_is_not_reported_unreadable(
    tmp_path: Path, server: EmulatorServer, db_url: str
) -> None:
    config = write_config(tmp_path, deployment_url(server), db_url)
    document = tmp_path / "drop" / "scan.txt"
    document.write_bytes(FAIL_MARKER)  # the first version fails: scan.txt.error.json
    with running_daemon(config) as daemon:
        wait_for(lambda: daemon.progress().finished == 1, what="the failed version")
        document.write_text(json.dumps({ECHO_KEY: {"ok": True}}))  # fixed: its .json replaces
        wait_for(lambda: daemon.progress().finished == 2, what="the fixed version")
    assert not (tmp_path / "drop" / "scan.txt.error.json").exists()
    done = cli(config, "export", "--format", "jsonl")
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [(r["source"], r["status"]) for r in rows] == [("scan.txt", "success")]
