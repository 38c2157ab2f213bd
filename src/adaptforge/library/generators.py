"""Fitted generators cached in the library (``generators/<key>/``: ``generator.json`` + ``generator.safetensors``,
written by :mod:`adaptforge.generate.storage`) as part of its contract: ``verify`` checks each one's format and
tensor checksum, and ``gc`` removes the ones nothing needs any more.

A generator is needed while a stored adapter names it (a generated adapter's ``params.generator_id``) or while
every adapter it learned from is still in the library (``generate`` may reuse it). Checked without torch."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from adaptforge.durable import TMP_PREFIX, sha256_file

META_FILE = "generator.json"
TENSORS_FILE = "generator.safetensors"
FORMAT = "adaptforge-lora-generator"
VERSION = 1


@dataclass(frozen=True)
class GeneratorFolder:
    """One folder of ``generators/``: its problem (None: sound) and the adapter names it learned from (None:
    unknown, as for a damaged folder)."""

    path: Path
    problem: str | None
    learned_from: tuple[str, ...] | None


def generator_folders(root: Path) -> list[Path]:
    """The generator folders (not temp folders) under ``root`` (a library's ``generators/``)."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def generator_temp_folders(root: Path) -> list[Path]:
    """Folders a generator write in progress (or one that crashed) left under ``root``."""
    if not root.is_dir():
        return []
    return sorted(p for p in root.glob(f"{TMP_PREFIX}*") if p.is_dir())


def inspect_generator(folder: Path) -> GeneratorFolder:
    """Read ``generator.json`` (format, version) and check the tensor file's sha256 against it."""
    meta_path, tensors_path = folder / META_FILE, folder / TENSORS_FILE
    for path in (meta_path, tensors_path):
        if not path.is_file():
            return GeneratorFolder(folder, f"generator {folder.name}: {path.name} is missing at {path}", None)
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        return GeneratorFolder(folder, f"generator {folder.name}: {meta_path} is not valid JSON ({err})", None)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        return GeneratorFolder(
            folder, f"generator {folder.name}: {meta_path} is not an {FORMAT} version {VERSION} file", None
        )
    actual = sha256_file(tensors_path)
    if actual != meta.get("tensors_sha256"):
        return GeneratorFolder(
            folder,
            f"generator {folder.name}: {tensors_path} has sha256 {actual[:16]}..., {META_FILE} recorded "
            f"{str(meta.get('tensors_sha256'))[:16]}...; the file is corrupted or was modified",
            None,
        )
    names = meta.get("names")  # span generators
    if names is None and isinstance(meta.get("info"), dict):
        names = meta["info"].get("adapters")  # icm generators
    learned = tuple(str(n) for n in names) if isinstance(names, list) else None
    return GeneratorFolder(folder, None, learned)


def unused_generators(
    folders: list[GeneratorFolder], adapter_names: Collection[str], referenced: Collection[str]
) -> list[Path]:
    """Generators no stored adapter names and ``generate`` can no longer reuse (one of the adapters they learned
    from is gone, or that is unknown because the folder is damaged)."""
    unused = []
    for found in folders:
        if found.path.name in referenced:
            continue
        if found.learned_from is None or any(n not in adapter_names for n in found.learned_from):
            unused.append(found.path)
    return unused
