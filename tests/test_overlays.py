"""The pictures: the evaluation heatmap takes numpy arrays and torch tensors alike, in the overlays' colour map."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inference.overlays import DEFAULT_ALPHA, DEFAULT_COLOUR_MAP, colour_table, save_heatmap

REPO = Path(__file__).resolve().parents[1]


def _inputs(height: int = 6, width: int = 8) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = np.zeros((3, height, width), dtype=np.float32)  # black, so the overlay shows the colour alone
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[2:4, 3:6] = 1
    anomaly_map = np.zeros((height, width), dtype=np.float32)
    anomaly_map[:, width // 2 :] = 1.0
    return image, mask, anomaly_map


def test_the_heatmap_is_image_truth_and_map_in_the_overlays_colours(tmp_path):
    image, mask, anomaly_map = _inputs()
    save_heatmap(tmp_path / "heatmaps" / "disc_0000.png", image, mask, anomaly_map)
    picture = np.asarray(Image.open(tmp_path / "heatmaps" / "disc_0000.png"))
    assert picture.shape == (6, 3 * 8, 3)
    assert not picture[:, :8].any()
    assert np.array_equal(picture[:, 8:16, 0] > 0, mask > 0)
    top = np.round(DEFAULT_ALPHA * colour_table(DEFAULT_COLOUR_MAP)[255]).astype(np.uint8)
    assert (picture[:, 16 + 4 :] == top).all() and not picture[:, 16 : 16 + 4].any()


def test_the_heatmap_takes_torch_tensors_like_numpy_arrays(tmp_path):
    torch = pytest.importorskip("torch")
    arrays = _inputs()
    arrays[0][:] = np.random.default_rng(0).random(arrays[0].shape)
    save_heatmap(tmp_path / "numpy.png", *arrays)
    save_heatmap(tmp_path / "torch.png", *(torch.from_numpy(array) for array in arrays))
    pictures = [np.asarray(Image.open(tmp_path / name)) for name in ("numpy.png", "torch.png")]
    assert np.array_equal(*pictures)


def test_a_map_of_another_size_is_named(tmp_path):
    image, mask, _ = _inputs()
    with pytest.raises(ValueError, match="anomaly_map has shape"):
        save_heatmap(tmp_path / "x.png", image, mask, np.zeros((3, 3)))


def test_the_pictures_never_import_torch():
    code = "import sys, inference.overlays; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
