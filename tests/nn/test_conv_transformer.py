import pytest
import torch

from tsformer.attention import LogSparse
from tsformer.nn.attention import ConvSelfAttention
from tsformer.nn.conv_transformer import ConvTransformerForecaster


def _model(pattern="logsparse", **kw):
    torch.manual_seed(0)
    return ConvTransformerForecaster(num_series=3, num_covariates=4, d_model=32, n_heads=4, n_layers=2, d_ff=64,
                                     conv_kernel=3, dropout=0.0, attention={"pattern": pattern, **kw}).eval()


def _inputs(B=2, L=40):
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, L, generator=g), torch.randn(B, L, 4, generator=g), torch.tensor([0, 2][:B])


def test_shapes():
    m = _model()
    x, cov, sid = _inputs()
    mu, sigma = m(x, cov, sid)
    assert mu.shape == sigma.shape == (2, 40) and (sigma > 0).all()


@pytest.mark.parametrize("pattern", ["logsparse", "causal"])
def test_causal(pattern):
    """Changing the input at time t never changes outputs before t."""
    m = _model(pattern)
    x, cov, sid = _inputs()
    mu, _ = m(x, cov, sid)
    for t in (0, 7, 25, 39):
        x2, cov2 = x.clone(), cov.clone()
        x2[:, t:] += 3.0
        cov2[:, t:] -= 1.0
        mu2, _ = m(x2, cov2, sid)
        torch.testing.assert_close(mu2[:, :t], mu[:, :t])
        if t < 39:
            assert not torch.allclose(mu2[:, t:], mu[:, t:])


def test_conv_kernel_one_is_plain_attention():
    torch.manual_seed(0)
    a = ConvSelfAttention(16, 2, kernel_size=1, kernel="reference", pattern="logsparse")
    x = torch.randn(2, 9, 16)
    out = a(x)
    # the same computation written out with a linear query/key projection
    w, b = a.qk.weight[:, :, 0], a.qk.bias
    q, k = (x @ w.T + b).chunk(2, -1)
    v = a.v(x)
    mask = LogSparse().to_dense(9)
    heads = lambda t: t.view(2, 9, 2, 8).transpose(1, 2)
    att = torch.softmax((heads(q) @ heads(k).transpose(-1, -2) / 8**0.5).masked_fill(~mask, float("-inf")), -1)
    ref = a.out((att @ heads(v)).transpose(1, 2).reshape(2, 9, 16))
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("kernel", ["logsparse", "auto"])
def test_sparse_kernel_matches_reference_in_model(kernel):
    m = _model()
    x, cov, sid = _inputs()
    mu_ref, s_ref = m(x, cov, sid)
    for blk in m.blocks:
        blk.attn.spec.kernel = kernel
    mu, s = m(x, cov, sid)
    torch.testing.assert_close(mu, mu_ref)
    torch.testing.assert_close(s, s_ref)


@pytest.mark.parametrize("pattern,extra", [("logsparse", {}), ("logsparse", {"local": 3, "restart": 16}), ("causal", {})])
def test_cached_sampling_equals_full_recompute(pattern, extra):
    m = _model(pattern, **extra)
    C, H = 30, 9
    x, cov, sid = _inputs(L=C + H)
    inputs = x[:, : C + 1]
    a = m.sample(inputs, cov, sid, num_samples=5, generator=torch.Generator().manual_seed(3))
    b = m.sample_reference(inputs, cov, sid, num_samples=5, generator=torch.Generator().manual_seed(3))
    assert a.shape == (2, 5, H)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_rejects_non_causal_pattern():
    with pytest.raises(ValueError, match="causal"):
        _model("full")


def test_bad_kernel_name():
    with pytest.raises(ValueError, match="unknown attention kernel"):
        _model(kernel="nope")
