"""Hopenet loader for user weights: the release's key layout loads, angles come from the bin
expectation, a wrong file names itself."""
import numpy as np
import pytest
import torch

from faceswap.core.weights import WeightsError
from faceswap_models.auxiliary.hopenet import Hopenet, HopenetPose, bins_to_degrees


def test_bins_to_degrees_hand_cases():
    onehot = torch.full((2, 66), -1e4)
    onehot[0, 33] = 0.0  # bin 33 -> 33 * 3 - 99 = 0 deg
    onehot[1, 43] = 0.0  # -> 30 deg
    assert bins_to_degrees(onehot).tolist() == pytest.approx([0.0, 30.0])
    assert bins_to_degrees(torch.zeros(1, 66)).item() == pytest.approx(65 / 2 * 3 - 99)  # uniform: mean bin


def test_load_release_layout_and_predict(tmp_path):
    torch.manual_seed(0)
    state = Hopenet().state_dict()
    state["fc_finetune.weight"] = torch.zeros(3, 2048)  # present in the release, unused: ignored
    state["fc_finetune.bias"] = torch.zeros(3)
    torch.save(state, tmp_path / "hopenet.pkl")
    pose = HopenetPose(tmp_path / "hopenet.pkl", batch_size=2)
    crops = [np.full((96, 96, 3), v, np.uint8) for v in (0, 128, 255)]
    out = pose(crops)
    assert out.shape == (3, 3) and np.isfinite(out).all() and (np.abs(out) < 99).all()
    assert np.allclose(pose(crops[:1]), out[:1], atol=1e-4)  # batch-independent


def test_wrong_file_names_itself(tmp_path):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(WeightsError, match="bad.pth"):
        HopenetPose(tmp_path / "bad.pth")
