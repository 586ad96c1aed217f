"""Tests of the atomic folder write (inference/atomic.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from inference.atomic import atomic_dir, replace_dir, staging_dir


def tree(folder: Path) -> dict[str, str]:
    """Every file of a folder by relative path, with its text."""
    return {p.relative_to(folder).as_posix(): p.read_text() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_staging_dir_is_a_fresh_hidden_sibling_that_is_not_created(tmp_path):
    target = tmp_path / "out"
    first, second = staging_dir(target, "tmp"), staging_dir(target, "tmp")
    assert first.parent == tmp_path and first.name.startswith(".out.tmp-")
    assert first != second and not first.exists()


def test_replace_dir_creates_or_swaps_the_target(tmp_path):
    staging, target = tmp_path / "new", tmp_path / "out"
    staging.mkdir()
    (staging / "a.txt").write_text("first")
    replace_dir(staging, target)
    assert tree(target) == {"a.txt": "first"} and not staging.exists()
    staging.mkdir()
    (staging / "b.txt").write_text("second")
    replace_dir(staging, target)
    assert tree(target) == {"b.txt": "second"}  # the old content is gone, not merged
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_restores_the_target_when_the_swap_fails(tmp_path, monkeypatch):
    staging, target = tmp_path / "new", tmp_path / "out"
    staging.mkdir()
    target.mkdir()
    (target / "keep.txt").write_text("old")
    original_rename = Path.rename

    def rename(self, destination):
        if self == staging:
            raise OSError(28, "No space left on device")
        return original_rename(self, destination)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="No space left"):
        replace_dir(staging, target)
    assert tree(target) == {"keep.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new", "out"]  # no backup folder left


def test_atomic_dir_swaps_in_a_complete_folder_and_creates_parents(tmp_path):
    target = tmp_path / "deep" / "out"
    with atomic_dir(target) as staging:
        assert staging.is_dir() and staging.parent == target.parent and not target.exists()
        (staging / "sub").mkdir()
        (staging / "sub" / "file.txt").write_text("done")
    assert tree(target) == {"sub/file.txt": "done"}
    assert sorted(p.name for p in target.parent.iterdir()) == ["out"]


def test_atomic_dir_error_removes_staging_and_keeps_the_old_target(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError, match="failed half-way"):
        with atomic_dir(target) as staging:
            (staging / "half.txt").write_text("partial")
            raise RuntimeError("failed half-way")
    assert tree(target) == {"keep.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "new"):
            raise KeyboardInterrupt
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
