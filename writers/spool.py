"""The valve's spool: chunks of COPY text in files on the writing process's disk, each fsynced before it is named.

A chunk is the rows of the traces one spooler took at once (their three tables' COPY text) in one file of its own:
a one-line JSON header that says where each table's rows lie (offset, length, row count), then the rows. It is
written as `NAME.part`, fsynced, renamed to `NAME.chunk` and the directory fsynced: a `.chunk` file is whole and
survives a crash of the process or of the machine; a `.part` file is one the writer never returned from (its rows
were never acknowledged to an engineer). One file per chunk makes its end simple: the consumer that stored its rows
deletes it, whichever process that is.

The files are named `RUN-HOST-PID-SEQ.chunk` (one writing process's own sequence), so processes of one machine may
share a spool directory, and `firehose valve flush --spool DIR` loads whatever a crashed process left in it.
The functions here block (file system calls): the writer runs them in gevent's thread pool.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from telemetry.layout import TABLES

CHUNK_SUFFIX = ".chunk"
PARTIAL_SUFFIX = ".part"
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes of a size such as `500MB`, `2 GB`, `1.5g`, `4096` (kB, MB, GB, TB in powers of 1024, as PostgreSQL)."""
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a size: give bytes with a unit, e.g. 500MB or 2GB")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class Section:
    """Where one table's rows lie in a chunk file."""

    offset: int
    length: int
    rows: int

    def encode(self) -> bytes:
        """As a pointer's field: b"offset length rows"."""
        return b"%d %d %d" % (self.offset, self.length, self.rows)

    @classmethod
    def decode(cls, field: bytes) -> Section:
        offset, length, rows = (int(part) for part in field.split())
        return cls(offset, length, rows)


def write_chunk(path: Path, tables: dict[str, bytes]) -> dict[str, Section]:
    """Write one chunk (each table's COPY text) to `path` durably: written, fsynced, renamed, directory fsynced.
    Returns each table's section (tables without rows left out)."""
    sections, offset = {}, 0
    for table in TABLES:
        if data := tables.get(table):
            sections[table] = Section(offset, len(data), data.count(b"\n"))
            offset += len(data)
    header = json.dumps({table: [s.offset, s.length, s.rows] for table, s in sections.items()}).encode() + b"\n"
    sections = {table: Section(s.offset + len(header), s.length, s.rows) for table, s in sections.items()}
    partial = path.with_suffix(PARTIAL_SUFFIX)
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.writev(fd, [header, *(tables[table] for table in sections)])
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(partial, path)
    sync_directory(path.parent)
    return sections


def sync_directory(directory: Path) -> None:
    """fsync a directory, so that a file created or renamed in it survives a crash of the machine."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_sections(path: Path, sections: dict[str, Section]) -> dict[str, bytes]:
    """The rows of these sections of a chunk file (FileNotFoundError once the chunk was stored and deleted)."""
    with path.open("rb") as chunk:
        found = {}
        for table, section in sections.items():
            chunk.seek(section.offset)
            found[table] = chunk.read(section.length)
    return found


def read_chunk(path: Path) -> dict[str, bytes]:
    """Every table's rows of a chunk file, located by its own header (no pointer needed)."""
    with path.open("rb") as chunk:
        header = json.loads(chunk.readline())
        start = chunk.tell()
        found = {}
        for table, (offset, length, _) in header.items():
            chunk.seek(start + offset)
            found[table] = chunk.read(length)
    return found


def chunk_files(directory: Path) -> list[Path]:
    """The whole chunks in a spool directory, oldest name first (none when it does not exist)."""
    if not directory.is_dir():
        return []
    return sorted(directory.glob(f"*{CHUNK_SUFFIX}"))


def chunk_prefix(run_id: int, host: str, pid: int) -> str:
    """The start of a writing process's chunk names: RUN-HOST-PID (its sequence and the suffix follow)."""
    return f"{run_id}-{host}-{pid}"


def chunks_of_other_runs(directory: Path, run_id: int) -> list[Path]:
    """The whole chunks in a spool directory that a run other than `run_id` wrote (the RUN of their names)."""
    return [path for path in chunk_files(directory) if path.name.split("-", 1)[0] != str(run_id)]


def partial_files(directory: Path) -> list[Path]:
    """Chunks a crash cut while they were written (never acknowledged to an engineer)."""
    return sorted(directory.glob(f"*{PARTIAL_SUFFIX}")) if directory.is_dir() else []


def spool_bytes(directory: Path) -> int:
    """Bytes of the chunks waiting in a spool directory (every process's that writes there)."""
    total = 0
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.endswith((CHUNK_SUFFIX, PARTIAL_SUFFIX)):
                    with contextlib.suppress(FileNotFoundError):  # stored and deleted meanwhile
                        total += entry.stat().st_size
    except FileNotFoundError:
        return 0
    return total


def spooled_rows(directory: Path) -> tuple[int, int]:
    """(chunk files, rows) waiting in a spool directory, from the chunks' headers."""
    files = rows = 0
    for path in chunk_files(directory):
        try:
            with path.open("rb") as chunk:
                header = json.loads(chunk.readline())
        except FileNotFoundError:
            continue
        files += 1
        rows += sum(entry[2] for entry in header.values())
    return files, rows
