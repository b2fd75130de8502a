"""Log-mel features, speed perturbation, feature statistics."""

import torch

from tsformer.data.speech.audio import LogMelFilterbank, feature_stats, speed_perturb


def test_fbank_shape():
    f = LogMelFilterbank(n_mels=80)(torch.randn(16000))
    assert f.shape == (101, 80) and torch.isfinite(f).all()


def test_speed_perturb_changes_length():
    x = torch.randn(16000)
    assert abs(speed_perturb(x, 1.1).shape[0] - 16000 / 1.1) < 5
    assert speed_perturb(x, 1.0) is x


def test_feature_stats():
    mean, std = feature_stats([torch.tensor([[1.0, 2.0], [3.0, 2.0]]), torch.tensor([[5.0, 2.0]])])
    assert mean == [3.0, 2.0]
    assert abs(std[0] - (8 / 3) ** 0.5) < 1e-6 and std[1] == 1e-3
