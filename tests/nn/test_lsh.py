"""Reformer LSH attention (Kitaev et al. 2020): the sorted-chunk path against its dense twin,
one bucket against exact attention, strict causality, padding invariance, the multi-round
combination by hand, hashing schedule, decoding, errors and a training run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from tsformer.attention.lsh import (
    SELF_SCORE,
    draw_rotations,
    lsh_attention,
    lsh_attention_reference,
    lsh_buckets,
)
from tsformer.nn.attention import LSHAttention, build_attention


def _inputs(B, H, L, D, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g).requires_grad_()
    v = torch.randn(B, H, L, D + 1, generator=g).requires_grad_()
    return q, v


def _grads(out, *ts):
    return torch.autograd.grad((out * torch.linspace(-1, 1, out.shape[-2])[:, None]).sum(), ts, retain_graph=True)


@pytest.mark.parametrize("buckets", [2, 4, 8, 64])
def test_buckets_are_the_argmax_over_rotated_and_negated(buckets):
    """h(x) = argmax([xR; -xR]) (Kitaev et al. 2020, Sec. 3), written out, ties included."""
    x = torch.randn(2, 3, 17, 8, generator=torch.Generator().manual_seed(buckets))
    rot = draw_rotations(3, 2, 8, buckets, generator=torch.Generator().manual_seed(1))
    xr = torch.einsum("bhld,hrdk->bhrlk", x, rot)
    assert torch.equal(lsh_buckets(x, rot), torch.cat([xr, -xr], -1).argmax(-1))
    # a tie between a largest and a most negative value: the first half, as argmax takes it
    tie = torch.tensor([[1.0, 0.0], [0.0, -1.0]]).reshape(1, 1, 2, 2)  # x = (1, 1): xR = (1, -1)
    xr = torch.einsum("bhld,hrdk->bhrlk", torch.ones(1, 1, 1, 2), tie)
    assert torch.equal(lsh_buckets(torch.ones(1, 1, 1, 2), tie), torch.cat([xr, -xr], -1).argmax(-1))
    assert lsh_buckets(torch.ones(1, 1, 1, 2), tie).item() == 0


@pytest.mark.parametrize("L", [1, 2, 7, 33])
@pytest.mark.parametrize("buckets,rounds,chunk,causal", [(1, 1, 64, False), (4, 2, 4, True), (8, 3, 3, False),
                                                        (2, 1, 1, True), (6, 2, 5, False)])
def test_chunked_path_equals_dense_twin(L, buckets, rounds, chunk, causal):
    B, H, D = 2, 3, 5
    q, v = _inputs(B, H, L, D, seed=L)
    k = F.normalize(q, dim=-1)
    rot = draw_rotations(H, rounds, D, buckets, generator=torch.Generator().manual_seed(1))
    b = lsh_buckets(k, rot)
    lengths = torch.tensor([L, max(1, L - 3)])
    fast = lsh_attention(q, k, v, b, buckets, chunk, causal=causal, lengths=lengths)
    ref = lsh_attention_reference(q, k, v, b, buckets, chunk, causal=causal, lengths=lengths)
    assert_close(fast, ref, rtol=1e-5, atol=1e-6)
    for a, r in zip(_grads(fast, q, v), _grads(ref, q, v)):
        assert_close(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("L,causal", [(1, True), (7, False), (33, True)])
def test_head_by_head_checkpointed_path_equals_one_piece(L, causal):
    """Long inputs run one head and round at a time, recomputed in the backward."""
    q, v = _inputs(2, 3, L, 5, seed=L)
    k = F.normalize(q, dim=-1)
    b = lsh_buckets(k, draw_rotations(3, 2, 5, 4, generator=torch.Generator().manual_seed(2)))
    lengths = torch.tensor([L, max(1, L - 2)])
    whole = lsh_attention(q, k, v, b, 4, 3, causal=causal, lengths=lengths)
    pieces = lsh_attention(q, k, v, b, 4, 3, causal=causal, lengths=lengths, max_block_scores=0)
    assert_close(pieces, whole, rtol=1e-6, atol=1e-7)
    for a, r in zip(_grads(pieces, q, v), _grads(whole, q, v)):
        assert_close(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("L,causal,shared,segment", [(1, False, True, 1), (1, True, False, 2**21), (8, True, True, 1),
                                                     (13, False, True, 2**21), (13, True, False, 1),
                                                     (33, False, False, 40), (33, True, True, 40)])
def test_memory_saving_pieces_equal_the_dense_twin(L, causal, shared, segment):
    """The head-and-round pieces (shared-QK keys made piece by piece, or given keys; the
    sorted chunks in checkpointed segments of one or a few chunks, or in one run) against
    the dense twin: outputs and the gradients of queries, keys and values."""
    q, v = _inputs(2, 3, L, 5, seed=L + 7)
    k = None if shared else F.normalize(q.detach(), dim=-1).add(0.1).requires_grad_()
    b = lsh_buckets(F.normalize(q, dim=-1), draw_rotations(3, 3, 5, 4, generator=torch.Generator().manual_seed(3)))
    lengths = torch.tensor([L, max(1, L - 4)])
    pieces = lsh_attention(q, k, v, b, 4, 2, causal=causal, lengths=lengths, max_block_scores=0,
                           segment_scores=segment)
    kr = F.normalize(q, dim=-1) if shared else k
    ref = lsh_attention_reference(q, kr, v, b, 4, 2, causal=causal, lengths=lengths)
    assert_close(pieces, ref, rtol=1e-5, atol=1e-6)
    leaves = (q, v) if shared else (q, k, v)
    for a, r in zip(_grads(pieces, *leaves), _grads(ref, *leaves)):
        assert_close(a, r, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        again = lsh_attention(q, k, v, b, 4, 2, causal=causal, lengths=lengths, max_block_scores=0, segment_scores=segment)
        assert_close(again, pieces)


def test_pieces_replay_dropout_in_the_backward():
    """With dropout the backward recomputes each piece with the very masks of the forward:
    its gradients equal autograd through the same pieces drawn from the same seed."""
    from tsformer.attention.lsh import _piece, _valid, combine_rounds

    q, v = _inputs(1, 2, 11, 4, seed=5)
    b = lsh_buckets(F.normalize(q, dim=-1), draw_rotations(2, 2, 4, 2, generator=torch.Generator().manual_seed(4)))
    torch.manual_seed(11)
    out = lsh_attention(q, None, v, b, 2, 3, causal=True, dropout_p=0.3, max_block_scores=0, segment_scores=20)
    torch.manual_seed(11)
    args = (2, 3, True, _valid(None, 1, 11, q.device), 4**-0.5, 0.3, 20)
    heads = []
    for h in range(2):
        parts = [_piece(q, None, v, b, h, r, *args) for r in range(2)]
        heads.append(combine_rounds(torch.cat([o for o, _ in parts], 2), torch.cat([s for _, s in parts], 2)))
    ref = torch.cat(heads, 1)
    assert_close(out, ref)
    assert not torch.equal(out, lsh_attention(q, None, v, b, 2, 3, causal=True, max_block_scores=0))
    for a, r in zip(_grads(out, q, v), _grads(ref, q, v)):
        assert_close(a, r, rtol=1e-5, atol=1e-6)


def _exact_self_masked(q, v, causal):
    """Softmax attention with keys = normalised queries and the self score -1e5 (Sec. 3)."""
    L = q.shape[-2]
    s = q @ F.normalize(q, dim=-1).transpose(-1, -2) * q.shape[-1] ** -0.5
    s = torch.where(torch.eye(L, dtype=torch.bool), torch.full_like(s, SELF_SCORE), s)
    if causal:
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), float("-inf"))
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("L", [1, 2, 9, 31])
@pytest.mark.parametrize("causal", [False, True])
def test_one_bucket_is_exact_attention_with_self_masking(L, causal):
    q, v = _inputs(2, 2, L, 4, seed=L)
    b = torch.zeros(2, 2, 3, L, dtype=torch.long)  # three rounds, all in one bucket
    out = lsh_attention(q, F.normalize(q, dim=-1), v, b, 1, chunk=L, causal=causal)
    exact = _exact_self_masked(q, v, causal)
    assert_close(out, exact, rtol=1e-5, atol=1e-6)
    for a, r in zip(_grads(out, q, v), _grads(exact, q, v)):
        assert_close(a, r, rtol=1e-5, atol=1e-6)


def test_one_bucket_layer_is_exact_attention():
    torch.manual_seed(0)
    layer = LSHAttention(16, 2, buckets=1, rounds=2, lsh_chunk=64, pattern="causal")
    x = torch.randn(2, 11, 16, requires_grad=True)
    q = layer.heads(layer.qk(x))
    want = layer.out(layer.merge(_exact_self_masked(q, layer.heads(layer.v(x)), True)))
    got = layer(x)
    assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert_close(torch.autograd.grad(got.sum(), x)[0], torch.autograd.grad(want.sum(), x)[0], rtol=1e-5, atol=1e-6)


def test_rounds_are_combined_by_their_log_sum_exp_by_hand():
    """L = 4, two rounds with buckets [0, 1, 0, 1] and [0, 0, 0, 1], one chunk: query 2 attends
    to {0} in round one and {0, 1} in round two (itself only if nothing else)."""
    q = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 2.0], [-1.0, 1.0]])[None, None]
    v = torch.tensor([[1.0], [2.0], [3.0], [4.0]])[None, None]
    b = torch.tensor([[0, 1, 0, 1], [0, 0, 0, 1]])[None, None]
    k = F.normalize(q, dim=-1)
    out = lsh_attention(q, k, v, b, 2, chunk=4, causal=True)
    s = lambda i, j: float(q[0, 0, i] @ k[0, 0, j]) / 2**0.5  # noqa: E731
    want = []
    for i in range(4):
        outs, lses = [], []
        for r in range(2):
            js = [j for j in range(i) if b[0, 0, r, j] == b[0, 0, r, i]]
            scores = torch.tensor([s(i, j) for j in js] or [SELF_SCORE], dtype=torch.float64)
            vals = torch.tensor([float(v[0, 0, j]) for j in js] or [float(v[0, 0, i])], dtype=torch.float64)
            lses.append(torch.logsumexp(scores, 0))
            outs.append(torch.softmax(scores, 0) @ vals)
        w = torch.softmax(torch.stack(lses), 0)
        want.append(float(w @ torch.stack(outs)))
    assert_close(out[0, 0, :, 0], torch.tensor(want, dtype=torch.float32), rtol=1e-5, atol=1e-6)
    # position 0 has only itself; position 2 mixes its two rounds (not either one alone).
    assert out[0, 0, 0, 0] == 1.0 and 1.0 < out[0, 0, 2, 0] < 2.0


@pytest.mark.parametrize("training", [False, True])
def test_causal_form_never_sees_a_later_position(training):
    torch.manual_seed(0)
    layer = LSHAttention(16, 2, buckets=4, rounds=3, lsh_chunk=2, pattern="causal", dropout=0.0).train(training)
    x = torch.randn(2, 19, 16)
    for t in (0, 5, 12, 18):
        y = x.clone()
        y[:, t] += 3 * torch.randn(2, 16)  # a different vector: its buckets move too
        torch.manual_seed(1)
        a = layer(x)
        torch.manual_seed(1)
        b = layer(y)
        assert_close(a[:, :t], b[:, :t], rtol=0, atol=1e-6)
        assert (a[:, t] - b[:, t]).abs().max() > 1e-3


@pytest.mark.parametrize("pattern", ["full", "causal"])
def test_results_do_not_depend_on_batch_padding(pattern):
    torch.manual_seed(0)
    layer = LSHAttention(16, 2, buckets=4, rounds=2, lsh_chunk=3, pattern=pattern).eval()
    x = torch.randn(1, 13, 16)
    alone = layer(x)
    for pad in (1, 6, 20):
        padded = torch.cat([x, 50 * torch.randn(1, pad, 16)], 1)  # garbage in the padding
        batch = torch.cat([padded, torch.randn(1, 13 + pad, 16)], 0)
        out = layer(batch, torch.tensor([13, 13 + pad]))
        assert_close(out[:1, :13], alone, rtol=1e-5, atol=1e-6)


def test_hashing_redrawn_in_training_fixed_in_evaluation_and_replayable():
    torch.manual_seed(0)
    layer = LSHAttention(16, 2, buckets=8, rounds=2, lsh_chunk=2)
    x = torch.randn(1, 24, 16)
    a, b = layer(x), layer(x)
    assert (a - b).abs().max() > 1e-4  # new rotations each training forward
    torch.manual_seed(5)
    c = layer(x)
    torch.manual_seed(5)
    assert torch.equal(c, layer(x))  # seeded: replayed exactly
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    r2 = layer.rotations(x.device, torch.float32).clone()
    layer.eval_rounds = 4
    r4 = layer.rotations(x.device, torch.float32)
    assert r4.shape[1] == 4 and torch.equal(r4[:, :2], r2)  # more rounds extend the same draw
    clone = LSHAttention(16, 2, buckets=8, rounds=2, lsh_chunk=2).eval()
    clone.load_state_dict(layer.state_dict())  # the evaluation hashing travels with the checkpoint
    clone.eval_rounds = 4
    assert torch.equal(clone(x), layer(x))


def test_decoding_step_by_step_equals_the_full_pass():
    from tsformer.nn.longformer import LongformerCharLM

    torch.manual_seed(0)
    lm = LongformerCharLM(20, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0, max_tokens=64,
                          attention={"type": "lsh", "buckets": 4, "lsh_chunk": 2, "rounds": 2}).eval()
    tokens = torch.randint(1, 20, (2, 17))
    full = lm(tokens)
    cache = lm.new_cache(2, 17)
    steps = [lm(tokens[:, :6], cache=cache)] + [lm(tokens[:, i : i + 1], cache=cache) for i in range(6, 17)]
    assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def test_forecaster_samples_through_the_shared_cache():
    from tsformer.nn.conv_transformer import ConvTransformerForecaster

    torch.manual_seed(0)
    net = ConvTransformerForecaster(3, 2, d_model=16, n_heads=2, n_layers=2, d_ff=32, dropout=0.0,
                                    attention={"type": "lsh", "buckets": 4, "lsh_chunk": 3}).eval()
    inputs, cov, series = torch.randn(2, 9), torch.randn(2, 13, 2), torch.tensor([0, 2])
    fast = net.sample(inputs, cov, series, num_samples=3, generator=torch.Generator().manual_seed(1))
    slow = net.sample_reference(inputs, cov, series, num_samples=3, generator=torch.Generator().manual_seed(1))
    assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_errors_say_what_and_why():
    with pytest.raises(ValueError, match="buckets = 1 or an even"):
        build_attention({"type": "lsh", "buckets": 3}, 16, 2)
    with pytest.raises(ValueError, match="no score-bias positions"):
        build_attention({"type": "lsh", "positions": "alibi"}, 16, 2)
    with pytest.raises(ValueError, match="cannot take pattern 'window'"):
        build_attention({"type": "lsh", "pattern": "window"}, 16, 2)
    with pytest.raises(ValueError, match="kernel="):
        build_attention({"type": "lsh", "kernel": "sdpa"}, 16, 2)
    with pytest.raises(ValueError, match="lsh_chunk >= 1"):
        build_attention({"type": "lsh", "lsh_chunk": 0}, 16, 2)
    with pytest.raises(ValueError, match="global tokens"):
        build_attention({"type": "lsh"}, 16, 2)(torch.randn(1, 4, 16), global_idx=(0,))
    assert build_attention({"type": "lsh"}, 16, 2, causal=True).pattern.causal  # a decoder's default


def test_reference_kernel_is_the_dense_twin():
    torch.manual_seed(0)
    fast = LSHAttention(16, 2, buckets=4, lsh_chunk=3, pattern="causal").eval()
    ref = LSHAttention(16, 2, buckets=4, lsh_chunk=3, pattern="causal", kernel="reference").eval()
    ref.load_state_dict(fast.state_dict())
    x = torch.randn(2, 10, 16)
    assert_close(fast(x, torch.tensor([10, 7]))[1, :7], ref(x, torch.tensor([10, 7]))[1, :7], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_trains_in_the_character_lm(tmp_path):
    from tsformer.train import compose_config, train

    cfg = compose_config([
        "task=pgbooks", "data.context=48", "data.train_samples=16", "data.batch_size=4", "data.eval_batch_size=8",
        "model.attention.type=lsh", "model.attention.pattern=causal", "model.attention.buckets=4", "model.attention.lsh_chunk=8",
        "model.attention.eval_rounds=4", "model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.d_ff=32",
        "model.window=[8]", "model.dilation=[1]", "trainer.max_steps=3", "trainer.val_check_interval=3",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", f"run_dir={tmp_path / 'run'}",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false"])
    assert 0 < train(cfg)["test/bpc"] < 8
