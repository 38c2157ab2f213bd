"""An adapter's folder as the library keeps it: the PEFT pair (plus extra files such as training snapshots)
checked against their recorded sha256, and ``adaptforge.json``, the record beside them from which the
catalog row can be re-created (:func:`~adaptforge.library.rebuild.rebuild_catalog`)."""

from __future__ import annotations

import json
from pathlib import Path

from adaptforge.durable import sha256_file
from adaptforge.library.records import (
    EXPORT_RECORD_FILE,
    PROVENANCE_FORMAT,
    AdapterRecord,
    CorruptAdapterError,
    LibraryError,
    as_embedding,
    check_kind,
    require_text,
    validate_name,
)
from adaptforge.provenance import legacy_kind
from adaptforge.structured import parse_json


def verify_files(record: AdapterRecord) -> None:
    """Every file present with the sha256 recorded (by the catalog, or by the provenance file on rebuild)."""
    from adaptforge.adapters import CONFIG_FILE, WEIGHTS_FILE  # the tensor code loads only when files are read

    files = (
        (WEIGHTS_FILE, record.checksum),
        (CONFIG_FILE, record.config_checksum),
        *record.extra_checksums.items(),
    )
    for filename, expected in files:
        path = record.path / filename
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            raise CorruptAdapterError(
                f"adapter {record.name!r} ({record.id}): {filename} is missing at {path}"
            ) from None
        if actual != expected:
            raise CorruptAdapterError(
                f"adapter {record.name!r} ({record.id}): {filename} at {path} has sha256 {actual[:16]}..., "
                f"the catalog recorded {expected[:16]}...; the file is corrupted or was modified"
            )


def write_provenance(record: AdapterRecord, folder: Path) -> None:
    """``adaptforge.json`` beside the PEFT files: the whole record but metrics, so that the catalog row can be
    re-created from the folder alone. PEFT ignores the extra file."""
    info = {"format": PROVENANCE_FORMAT, "version": 1, **record.to_json()}
    info.pop("path")
    (folder / EXPORT_RECORD_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))


def read_provenance(folder: Path) -> AdapterRecord:
    """The record stored beside an adapter by :func:`write_provenance`; LibraryError naming the field if unusable."""
    path = folder / EXPORT_RECORD_FILE
    if not path.is_file():
        raise LibraryError(f"{path}: missing; this adapter was stored before provenance files were written")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise LibraryError(f"{path}: unreadable ({err})") from None
    info = parse_json(text, str(path), LibraryError)
    if not isinstance(info, dict) or info.get("format") != PROVENANCE_FORMAT:
        raise LibraryError(f"{path}: not an adaptforge adapter record (field 'format' is not {PROVENANCE_FORMAT!r})")
    try:
        embedding = info.get("embedding")
        return AdapterRecord(
            id=str(info["id"]),
            name=validate_name(info["name"]),
            task=info.get("task"),
            description=info.get("description"),
            base_model=require_text(info["base_model"], "base_model"),
            base_fingerprint=require_text(info["base_fingerprint"], "base_fingerprint"),
            rank=int(info["rank"]),
            targets=tuple(str(t) for t in info["targets"]),
            recipe=dict(info.get("recipe") or {}),
            method=require_text(info["method"], "method"),
            params=dict(info.get("params") or {}),
            parents=tuple(str(p) for p in info.get("parents") or ()),
            checksum=require_text(info["checksum"], "checksum"),
            created=float(info["created"]),
            path=folder,
            embedding=None if embedding is None else as_embedding(embedding),
            config_checksum=require_text(info["config_checksum"], "config_checksum"),
            kind=check_kind(info.get("kind") or legacy_kind(info.get("recipe"), str(info["method"]))),
            extra_checksums={str(k): str(v) for k, v in (info.get("extra_checksums") or {}).items()},
        )
    except KeyError as err:
        raise LibraryError(f"{path}: missing field {err.args[0]!r}") from None
    except (TypeError, ValueError) as err:
        raise LibraryError(f"{path}: {err}") from None
