"""A backup's manifest: what it holds, and what a restore must know about the store it came from.

``manifest.json`` is written last, once every data file is complete and its checksum taken; a
folder without one is not a backup. A restore reads it first and checks every file's size and
SHA-256 before it changes anything, so a corrupt or truncated backup is refused whole.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from chatd.numbering import SequenceState

MANIFEST = "manifest.json"
# The manifest's own layout: a restore refuses a backup written by a later one.
FORMAT = 1
# How far back a backup measures each sequence's pace (``Manifest.taken_last_hour``).
PACE_WINDOW_SECONDS = 3600.0


class BackupRefused(Exception):
    """The backup cannot be restored as it is (missing, corrupt, truncated, of another engine)."""


@dataclass(frozen=True)
class DataFile:
    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What ``chatd backup`` records beside the data.

    ``taken_at`` is when the snapshot began: every row committed before it is in the backup.
    ``sequences`` holds, for every scope (and the application ids), the counter's value and the
    highest stored number as the backup saw them; for MySQL they are read once the dump is
    complete, so they are at least the dump's own (a restore moves counters above them).
    ``taken_last_hour`` counts what each sequence handed out in the hour before the snapshot:
    the pace a restore uses to skip the numbers that may have been handed out since.
    """

    engine: str
    chatd_version: str
    schema: list[str]
    taken_at: datetime
    finished_at: datetime
    counts: dict[str, int]
    sequences: dict[str, SequenceState]
    taken_last_hour: dict[str, int]
    files: list[DataFile]
    store_identity: str
    format: int = FORMAT
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        data = {
            "format": self.format,
            "engine": self.engine,
            "chatd_version": self.chatd_version,
            "schema": self.schema,
            "taken_at": _time(self.taken_at),
            "finished_at": _time(self.finished_at),
            "store_identity": self.store_identity,
            "counts": self.counts,
            "files": [{"name": f.name, "size": f.size, "sha256": f.sha256} for f in self.files],
            "sequences": {
                key: {"reserved": state.reserved, "stored": state.stored} for key, state in self.sequences.items()
            },
            "taken_last_hour": self.taken_last_hour,
            "notes": self.notes,
        }
        return orjson.dumps(data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)

    @classmethod
    def from_json(cls, raw: bytes) -> Manifest:
        try:
            data = orjson.loads(raw)
            if data["format"] > FORMAT:
                raise BackupRefused(
                    f"the backup's format {data['format']} is newer than this chatd reads ({FORMAT}): upgrade chatd"
                )
            return cls(
                engine=data["engine"],
                chatd_version=data["chatd_version"],
                schema=list(data["schema"]),
                taken_at=datetime.fromisoformat(data["taken_at"]),
                finished_at=datetime.fromisoformat(data["finished_at"]),
                counts={key: int(value) for key, value in data["counts"].items()},
                sequences={
                    key: SequenceState(int(value["reserved"]), int(value["stored"]))
                    for key, value in data["sequences"].items()
                },
                taken_last_hour={key: int(value) for key, value in data["taken_last_hour"].items()},
                files=[DataFile(f["name"], int(f["size"]), f["sha256"]) for f in data["files"]],
                store_identity=data["store_identity"],
                format=int(data["format"]),
                notes=dict(data.get("notes", {})),
            )
        except BackupRefused:
            raise
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BackupRefused(f"the manifest is not a chatd backup manifest: {exc!r}") from exc

    def write(self, folder: Path) -> None:
        write_atomically(folder / MANIFEST, self.to_json())


def read_verified(folder: Path) -> Manifest:
    """The manifest of the backup in ``folder``, once every data file it lists checked out.

    Raises BackupRefused, naming what is wrong, for a missing or unreadable manifest, a file
    missing, of another size (truncated) or with another checksum (corrupt).
    """
    path = folder / MANIFEST
    if not path.is_file():
        raise BackupRefused(f"{folder} is not a complete chatd backup: it has no {MANIFEST}")
    manifest = Manifest.from_json(path.read_bytes())
    for expected in manifest.files:
        data = folder / expected.name
        if Path(expected.name).name != expected.name:
            raise BackupRefused(f"the manifest names a file outside the backup: {expected.name!r}")
        if not data.is_file():
            raise BackupRefused(f"the backup's {expected.name} is missing")
        size = data.stat().st_size
        if size != expected.size:
            raise BackupRefused(
                f"the backup's {expected.name} is {size:,} bytes, not the {expected.size:,} its manifest"
                " records: it is truncated or was changed"
            )
        if sha256_of(data) != expected.sha256:
            raise BackupRefused(f"the backup's {expected.name} does not match its checksum: it is corrupt")
    return manifest


def describe(folder: Path, names: Iterable[str]) -> list[DataFile]:
    """Each named file of ``folder`` with its size and checksum, as the manifest lists them."""
    return [DataFile(name, (folder / name).stat().st_size, sha256_of(folder / name)) for name in names]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomically(path: Path, data: bytes, mode: int | None = None) -> None:
    """``data`` at ``path`` in full or not at all: written beside it, synced, renamed over it."""
    partial = path.with_name(f".{path.name}.partial")
    with partial.open("wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    if mode is not None:
        os.chmod(partial, mode)
    os.replace(partial, path)


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")
