"""Checks shared by the attention types that decode on a recurrent state (RWKV, Performer)."""

from __future__ import annotations

import torch
from torch.testing import assert_close


def check_forecast_sampling(attention: dict, ffn: str = "mlp") -> None:
    """A forecaster's cached sampling equals its reference sampling (every path recomputed)."""
    from tsformer.nn.conv_transformer import ConvTransformerForecaster

    torch.manual_seed(0)
    m = ConvTransformerForecaster(2, 1, d_model=16, n_heads=2, n_layers=2, d_ff=16, dropout=0.0, ffn=ffn,
                                  attention=attention).eval()
    g = torch.Generator().manual_seed(0)
    x, cov, sid = torch.randn(2, 14, generator=g), torch.randn(2, 18, 1, generator=g), torch.tensor([0, 1])
    a = m.sample(x, cov, sid, num_samples=3, generator=torch.Generator().manual_seed(2))
    b = m.sample_reference(x, cov, sid, num_samples=3, generator=torch.Generator().manual_seed(2))
    assert_close(a, b, rtol=1e-4, atol=1e-4)


def check_char_lm_decoding(attention: dict, ffn: str = "mlp") -> torch.nn.Module:
    """A char LM's prefill plus single steps equal its parallel pass; greedy generation with
    the cache equals generation without it, and Jacobi decoding finds the same tokens."""
    from tsformer.nn.decoding import generate_tokens, jacobi_tokens
    from tsformer.nn.longformer import LongformerCharLM

    torch.manual_seed(0)
    lm = LongformerCharLM(vocab_size=12, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[4, 4], max_tokens=256,
                          dropout=0.0, ffn=ffn, attention=attention).eval()
    tokens = torch.randint(0, 12, (2, 40))
    with torch.no_grad():
        full = lm(tokens)
        cache = lm.new_cache(2, 40)
        parts = [lm(tokens[:, :13], cache=cache)] + [lm(tokens[:, t : t + 1], cache=cache) for t in range(13, 37)]
        parts.append(lm(tokens[:, 37:], cache=cache))
    assert_close(torch.cat(parts, 1), full, rtol=1e-4, atol=1e-5)
    prompt = tokens[:, :5]
    greedy = generate_tokens(lm, prompt, 20, temperature=0.0, max_context=256)
    assert torch.equal(greedy, generate_tokens(lm, prompt, 20, temperature=0.0, cache=False, max_context=256))
    assert torch.equal(jacobi_tokens(lm, prompt, 20, block=4, max_context=256)[0], greedy)
    return lm
