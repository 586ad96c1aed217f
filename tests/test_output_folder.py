"""The one ownership rule of every folder a command writes (`inference.output_folder`), and safe names."""

import os

import pytest

from inference.output_folder import (
    OUTPUT_MARKER,
    OutputFolderError,
    check_output_folder,
    claim_output_folder,
    inside,
    read_marker,
    safe_name,
    write_marker,
)

ENTRIES = ["predictions.csv", "overlays"]


def _earlier_output(folder):
    claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=False)
    (folder / "predictions.csv").write_text("old")
    (folder / "overlays").mkdir()
    (folder / "overlays" / "a.png").write_bytes(b"old")


def test_a_new_or_empty_folder_is_claimed_and_marked(tmp_path):
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "new" / "nested", tmp_path / "empty"):
        claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=False)
        assert read_marker(folder) == {"written_by": "clipada predict", "entries": sorted(ENTRIES)}


def test_an_earlier_output_needs_the_flag_and_then_only_its_own_entries_go(tmp_path):
    folder = tmp_path / "out"
    _earlier_output(folder)
    with pytest.raises(OutputFolderError, match="already holds the output of an earlier clipada predict"):
        claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=False)
    assert (folder / "overlays" / "a.png").read_bytes() == b"old"
    claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=True)
    assert sorted(path.name for path in folder.iterdir()) == [OUTPUT_MARKER]


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_foreign_folder_is_refused_even_with_the_flag_and_left_as_it_was(tmp_path, overwrite):
    folder = tmp_path / "thesis"
    (folder / "data").mkdir(parents=True)
    (folder / "thesis.tex").write_text("chapter 1")
    (folder / "overlays").mkdir()
    (folder / "overlays" / "a.png").write_bytes(b"mine")
    with pytest.raises(OutputFolderError, match=r"not empty \(data, overlays, thesis.tex\) and was not written by"):
        claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=overwrite)
    assert (folder / "thesis.tex").read_text() == "chapter 1" and (
        folder / "overlays" / "a.png"
    ).read_bytes() == b"mine"
    assert not (folder / OUTPUT_MARKER).exists()


def test_a_user_file_added_to_our_folder_blocks_the_overwrite_and_survives(tmp_path):
    folder = tmp_path / "out"
    _earlier_output(folder)
    (folder / "notes.txt").write_text("keep me")
    with pytest.raises(OutputFolderError, match=r"did not write \(notes.txt\)"):
        claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=True)
    assert (folder / "notes.txt").read_text() == "keep me" and (folder / "predictions.csv").read_text() == "old"


def test_another_commands_folder_is_refused(tmp_path):
    folder = tmp_path / "out"
    _earlier_output(folder)
    with pytest.raises(OutputFolderError, match="holds the output of clipada predict, not of clipada eval"):
        claim_output_folder(folder, "clipada eval", ["metrics.json"], overwrite=True)


@pytest.mark.parametrize("damage", ["not json", '{"written_by": 3, "entries": []}', '{"written_by": "x"}', "[]"])
def test_a_damaged_marker_makes_the_folder_foreign(tmp_path, damage):
    folder = tmp_path / "out"
    _earlier_output(folder)
    (folder / OUTPUT_MARKER).write_text(damage)
    with pytest.raises(OutputFolderError, match="was not written by"):
        claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=True)
    assert (folder / "predictions.csv").read_text() == "old"


def test_a_marker_listing_a_path_outside_the_folder_deletes_nothing_outside(tmp_path):
    folder, victim = tmp_path / "out", tmp_path / "victim.txt"
    victim.write_text("precious")
    folder.mkdir()
    write_marker(folder, "clipada predict", ["../victim.txt"])
    with pytest.raises(OutputFolderError, match="path separator"):
        claim_output_folder(folder, "clipada predict", ENTRIES, overwrite=True)
    assert victim.read_text() == "precious"


def test_the_commands_own_input_is_never_its_output(tmp_path):
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"weights")
    for folder, says in ((checkpoint, "is the command's own input"), (tmp_path, "contains the command's own input"),
                         (checkpoint / "sub", "lies inside the command's own input")):  # fmt: skip
        with pytest.raises(OutputFolderError, match=says):
            check_output_folder(folder, "clipada export", overwrite=True, sources=[checkpoint])
    # predict may write below its input folder (it skips folders holding our marker), never into it
    check_output_folder(checkpoint / "results", "clipada predict", overwrite=False, contained_sources=[checkpoint])
    with pytest.raises(OutputFolderError, match="is the command's own input"):
        check_output_folder(checkpoint, "clipada predict", overwrite=True, contained_sources=[checkpoint])
    assert (checkpoint / "model.safetensors").read_bytes() == b"weights"


def test_a_symlink_to_the_source_is_the_source(tmp_path):
    checkpoint = tmp_path / "run"
    checkpoint.mkdir()
    (tmp_path / "alias").symlink_to(checkpoint)
    with pytest.raises(OutputFolderError, match="is the command's own input"):
        check_output_folder(tmp_path / "alias", "clipada export", overwrite=True, sources=[checkpoint])


def test_a_file_is_not_an_output_folder(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputFolderError, match="exists and is not a folder"):
        claim_output_folder(tmp_path / "file", "clipada eval", [], overwrite=True)


@pytest.mark.parametrize(
    "value", ["", ".", "..", "../../tmp/victim", "a/b", "a\\b", "line\nbreak", "nul\0", "tab\t", "x" * 201, "é" * 101]
)
def test_unsafe_names_are_refused_naming_the_field(value):
    with pytest.raises(OutputFolderError, match="category"):
        safe_name(value, "category")


@pytest.mark.parametrize("value", ["bottle", "metal_nut", "pcb 1", "-leading dash", "x" * 200, "ñandú", "=1+1"])
def test_ordinary_names_pass(value):
    assert safe_name(value, "category") == value


def test_inside_follows_symlinks(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    assert inside(folder, folder / "heatmaps" / "a.png") == folder / "heatmaps" / "a.png"
    os.symlink(tmp_path, folder / "escape")
    for path in (folder / ".." / "victim.npz", folder / "escape" / "victim.npz"):
        with pytest.raises(OutputFolderError, match="outside its output folder"):
            inside(folder, path)
