"""Durable writes: checksums, guarded removal, cross-process locks and atomically published folders."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
from pathlib import Path

import pytest

from adaptforge.durable import (
    TMP_PREFIX,
    LockedError,
    UnsafeRemovalError,
    exclusive_lock,
    publish_folder,
    remove_inside,
    sha256_file,
    stage_folder,
    staged_folder,
)


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith(TMP_PREFIX))


def write_files(folder: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (folder / name).write_text(text)


def read_files(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir())}


# ------------------------------------------------------------------------------------------ sha256_file


def test_sha256_file_equals_hashlib_over_the_bytes(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) + 12345)  # more than one 1 MiB chunk
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    assert sha256_file(path) == hashlib.sha256(data).hexdigest()


def test_sha256_file_of_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert sha256_file(path) == hashlib.sha256(b"").hexdigest()


# ---------------------------------------------------------------------------------------- remove_inside


def test_remove_inside_removes_a_folder_tree_and_a_file(tmp_path: Path) -> None:
    owner = tmp_path / "lib"
    (owner / "a" / "deep").mkdir(parents=True)
    (owner / "a" / "deep" / "x.txt").write_text("x")
    (owner / "f.txt").write_text("f")
    assert remove_inside(owner / "a", owner) is True
    assert remove_inside(owner / "f.txt", owner) is True
    assert list(owner.iterdir()) == []


def test_remove_inside_of_a_missing_path_removes_nothing(tmp_path: Path) -> None:
    owner = tmp_path / "lib"
    owner.mkdir()
    assert remove_inside(owner / "absent", owner) is False


def test_remove_inside_refuses_dotdot(tmp_path: Path) -> None:
    owner = tmp_path / "lib"
    (owner / "sub").mkdir(parents=True)
    for path in (owner / "..", owner / "sub" / ".."):
        with pytest.raises(UnsafeRemovalError):
            remove_inside(path, owner)
    assert (owner / "sub").is_dir()


def test_remove_inside_refuses_a_path_outside_the_owner(tmp_path: Path) -> None:
    owner = tmp_path / "lib"
    owner.mkdir()
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    with pytest.raises(UnsafeRemovalError, match="not strictly inside"):
        remove_inside(outside, owner)
    with pytest.raises(UnsafeRemovalError):
        remove_inside(owner / ".." / "precious" / "keep.txt", owner)
    assert (outside / "keep.txt").read_text() == "keep"


def test_remove_inside_refuses_the_owner_itself(tmp_path: Path) -> None:
    owner = tmp_path / "lib"
    owner.mkdir()
    (owner / "keep.txt").write_text("keep")
    with pytest.raises(UnsafeRemovalError):
        remove_inside(owner, owner)
    with pytest.raises(UnsafeRemovalError):
        remove_inside(owner / ".", owner)
    assert (owner / "keep.txt").is_file()


def test_remove_inside_unlinks_a_symlink_without_touching_its_target(tmp_path: Path) -> None:
    owner = tmp_path / "lib"
    owner.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    link = owner / "link"
    link.symlink_to(target, target_is_directory=True)
    assert remove_inside(link, owner) is True
    assert not link.exists() and not link.is_symlink()
    assert (target / "keep.txt").read_text() == "keep"


def test_remove_inside_refuses_a_path_reached_through_a_symlinked_folder(tmp_path: Path) -> None:
    """A child of a symlink that leads out of the owner resolves outside it: refused."""
    owner = tmp_path / "lib"
    owner.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    (owner / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeRemovalError):
        remove_inside(owner / "escape" / "keep.txt", owner)
    assert (outside / "keep.txt").read_text() == "keep"


def test_remove_inside_unlinks_a_dangling_symlink(tmp_path: Path) -> None:
    owner = tmp_path / "lib"
    owner.mkdir()
    link = owner / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    assert remove_inside(link, owner) is True
    assert not link.is_symlink()


# --------------------------------------------------------------------------------------- exclusive_lock


def try_lock(path: str, result: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    """In a child process: take the lock, report "acquired" or the LockedError message."""
    try:
        with exclusive_lock(Path(path), "the test library"):
            result.put(("acquired", os.getpid()))
    except LockedError as err:
        result.put(("locked", str(err)))


def lock_in_child(path: Path) -> tuple[str, object]:
    ctx = multiprocessing.get_context("fork")
    result = ctx.Queue()
    child = ctx.Process(target=try_lock, args=(str(path), result))
    child.start()
    try:
        outcome = result.get(timeout=30)
    finally:
        child.join(timeout=30)
    assert child.exitcode == 0
    return outcome


def test_a_second_process_gets_locked_error_while_the_lock_is_held(tmp_path: Path) -> None:
    path = tmp_path / "locks" / "library.lock"
    with exclusive_lock(path, "the test library"):
        assert path.read_text().strip() == str(os.getpid())
        status, message = lock_in_child(path)
        assert status == "locked"
        assert "the test library is in use by another process" in str(message) and str(path) in str(message)
    assert not path.exists()
    status, pid = lock_in_child(path)
    assert status == "acquired" and pid != os.getpid()


def test_the_lock_is_released_after_an_error_in_the_body(tmp_path: Path) -> None:
    path = tmp_path / "library.lock"
    with pytest.raises(RuntimeError), exclusive_lock(path, "x"):
        raise RuntimeError("boom")
    assert not path.exists()
    with exclusive_lock(path, "x"):
        assert path.exists()


# ----------------------------------------------------------------------------------- staged / published


def test_stage_folder_makes_an_empty_tmp_folder_beside_dest(tmp_path: Path) -> None:
    dest = tmp_path / "parent" / "adapter"
    tmp = stage_folder(dest)
    assert tmp.parent == dest.parent
    assert tmp.name.startswith(f"{TMP_PREFIX}adapter-")
    assert tmp.is_dir() and list(tmp.iterdir()) == []
    assert not dest.exists()
    assert stage_folder(dest) != tmp


def test_publish_folder_moves_the_staged_files_into_place(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    tmp = stage_folder(dest)
    write_files(tmp, {"a.txt": "A", "b.txt": "B"})
    publish_folder(tmp, dest)
    assert read_files(dest) == {"a.txt": "A", "b.txt": "B"}
    assert not tmp.exists() and leftovers(tmp_path) == []


def test_staged_folder_publishes_every_file_on_a_clean_exit(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    with staged_folder(dest) as tmp:
        assert tmp.name.startswith(TMP_PREFIX)
        write_files(tmp, {"weights.safetensors": "w", "config.json": "{}"})
        assert not dest.exists()
    assert read_files(dest) == {"config.json": "{}", "weights.safetensors": "w"}
    assert leftovers(tmp_path) == []


def test_an_error_inside_staged_folder_leaves_neither_tmp_nor_dest(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    with pytest.raises(RuntimeError, match="crash"), staged_folder(dest) as tmp:
        write_files(tmp, {"half.txt": "written"})
        raise RuntimeError("crash while writing")
    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_an_existing_non_empty_dest_is_refused_without_replace_and_kept(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    dest.mkdir()
    write_files(dest, {"old.txt": "old"})
    with pytest.raises(FileExistsError), staged_folder(dest) as tmp:
        write_files(tmp, {"new.txt": "new"})
    assert read_files(dest) == {"old.txt": "old"}
    assert leftovers(tmp_path) == []


def test_an_existing_dest_is_swapped_with_replace(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    dest.mkdir()
    write_files(dest, {"old.txt": "old", "shared.txt": "v1"})
    with staged_folder(dest, replace=True) as tmp:
        write_files(tmp, {"new.txt": "new", "shared.txt": "v2"})
    assert read_files(dest) == {"new.txt": "new", "shared.txt": "v2"}
    assert leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]


def test_an_empty_existing_dest_folder_is_replaced_without_replace(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    dest.mkdir()
    with staged_folder(dest) as tmp:
        write_files(tmp, {"a.txt": "A"})
    assert read_files(dest) == {"a.txt": "A"}
    assert leftovers(tmp_path) == []


def test_an_existing_file_at_dest_is_refused_without_replace(tmp_path: Path) -> None:
    dest = tmp_path / "adapter"
    dest.write_text("a file, not a folder")
    with pytest.raises(FileExistsError), staged_folder(dest) as tmp:
        write_files(tmp, {"a.txt": "A"})
    assert dest.read_text() == "a file, not a folder"
    assert leftovers(tmp_path) == []
