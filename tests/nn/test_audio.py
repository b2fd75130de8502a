"""SpecAugment masks and global mean/variance normalisation."""

import torch

from tsformer.nn.audio import GlobalCMVN, SpecAugment


def test_specaugment_masks_within_limits_and_lengths():
    sa = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=10)
    x = torch.ones(3, 50, 20)
    lengths = torch.tensor([50, 30, 12])
    g = torch.Generator().manual_seed(0)
    m = sa.mask(x, lengths, g)
    assert m.shape == x.shape
    for b in range(3):
        fm = m[b].all(0)  # frequency bins masked at every frame
        assert fm.sum() <= 10
        tm = m[b][:, ~fm].all(1) if (~fm).any() else m[b].all(1)
        assert tm.sum() <= 20
        assert not tm[int(lengths[b]):].any()  # time masks stay inside the utterance
    sa.eval()
    assert torch.equal(sa(x, lengths), x)  # identity at evaluation


def test_specaugment_masks_something_in_training():
    sa = SpecAugment(freq_masks=2, freq_width=5, time_masks=2, time_width=10).train()
    torch.manual_seed(0)
    y = sa(torch.ones(4, 50, 20), torch.full((4,), 50))
    assert 0 < (y == 0).float().mean() < 0.8


def test_global_cmvn_normalises_with_checkpointed_statistics():
    cmvn = GlobalCMVN(2, mean=[1.0, 2.0], std=[2.0, 4.0])
    assert torch.equal(cmvn(torch.tensor([[3.0, 2.0]])), torch.tensor([[1.0, 0.0]]))
    # The buffer names are checkpoint keys (``cmvn.mean``, ``cmvn.std`` in ConformerCTC): keep them.
    assert list(cmvn.state_dict()) == ["mean", "std"]
    again = GlobalCMVN(2)
    again.load_state_dict(cmvn.state_dict())
    assert torch.equal(again.std, torch.tensor([2.0, 4.0]))


def test_conformer_checkpoint_keys_of_the_feature_layers():
    from tsformer.nn.conformer import ConformerCTC

    net = ConformerCTC(13, 11, d_model=16, n_heads=2, n_layers=1, d_ff=32, conv_kernel=3, cmvn_mean=[0.5] * 13,
                       cmvn_std=[2.0] * 13, specaugment={"freq_masks": 1})
    keys = set(net.state_dict())
    assert {"cmvn.mean", "cmvn.std"} <= keys and not any(k.startswith("specaug.") for k in keys)
    assert isinstance(net.specaug, SpecAugment)
