"""A generator on disk: ``generator.json`` (metadata) + ``generator.safetensors`` (tensors), never pickle.

Writes are atomic: both files go to a temporary sibling folder, are fsynced, and the folder is renamed into
place (an existing generator is moved aside first and removed after the rename). The JSON records the
safetensors file's sha256, so a truncated or modified tensor file is detected on load.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from adaptforge.core import AdaptforgeError
from adaptforge.durable import sha256_file, staged_folder
from adaptforge.library.generators import FORMAT, META_FILE, TENSORS_FILE, VERSION


class GeneratorFileError(AdaptforgeError):
    """A generator folder that is missing, incomplete, corrupt or of another format."""


def write_generator_files(folder: Path, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Write ``meta`` and ``tensors`` as a generator folder, replacing any previous one atomically."""
    with staged_folder(Path(folder), replace=True) as tmp:
        save_file({k: t.detach().contiguous().cpu() for k, t in tensors.items()}, str(tmp / TENSORS_FILE))
        full = {"format": FORMAT, "version": VERSION, **meta, "tensors_sha256": sha256_file(tmp / TENSORS_FILE)}
        (tmp / META_FILE).write_text(json.dumps(full, indent=1, sort_keys=True))


def read_generator_files(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a generator folder, after checking format, version and checksum."""
    folder = Path(folder)
    meta_path, tensors_path = folder / META_FILE, folder / TENSORS_FILE
    for path in (meta_path, tensors_path):
        if not path.is_file():
            raise GeneratorFileError(f"{path}: missing; a generator folder holds {META_FILE} and {TENSORS_FILE}")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise GeneratorFileError(f"{meta_path}: not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise GeneratorFileError(f"{meta_path}: field 'format' is not {FORMAT!r}; not an adaptforge generator")
    if meta.get("version") != VERSION:
        raise GeneratorFileError(
            f"{meta_path}: field 'version' is {meta.get('version')!r}; this reader knows {VERSION}"
        )
    expected = meta.get("tensors_sha256")
    actual = sha256_file(tensors_path)
    if actual != expected:
        raise GeneratorFileError(
            f"{tensors_path}: sha256 {actual[:16]}... does not match {str(expected)[:16]}... recorded in {META_FILE} "
            "(field 'tensors_sha256'); the file is corrupted or was modified"
        )
    try:
        tensors = load_file(str(tensors_path))
    except Exception as err:  # safetensors raises its own error types for garbled files
        raise GeneratorFileError(f"{tensors_path}: not a readable safetensors file ({err})") from None
    return meta, tensors


def field(meta: dict[str, Any], key: str, folder: Path) -> Any:
    """``meta[key]``, or an error naming the JSON file and the missing field."""
    if key not in meta:
        raise GeneratorFileError(f"{Path(folder) / META_FILE}: field {key!r} is missing")
    return meta[key]


def tensor(
    tensors: dict[str, torch.Tensor], key: str, folder: Path, shape: tuple[int, ...] | None = None
) -> torch.Tensor:
    """``tensors[key]`` with an optional shape check, or an error naming the file and the tensor."""
    if key not in tensors:
        raise GeneratorFileError(f"{Path(folder) / TENSORS_FILE}: tensor {key!r} is missing")
    value = tensors[key]
    if shape is not None and tuple(value.shape) != shape:
        raise GeneratorFileError(
            f"{Path(folder) / TENSORS_FILE}: tensor {key!r} has shape {tuple(value.shape)}, expected {shape}"
        )
    return value
