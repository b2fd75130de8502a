"""Transformer-XL segment recurrence (Dai et al. 2019): memory equals the block-masked long
forward, carries no gradient, and can be longer in evaluation."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch.testing import assert_close

from tsformer.attention import Pattern
from tsformer.nn.longformer import LongformerCharLM


@dataclass(frozen=True)
class SegmentBlocks(Pattern):
    """Query ``i`` sees keys ``j <= i`` in its own segment and the ``back`` segments before."""

    size: int = 4
    back: int = 1

    @property
    def causal(self) -> bool:
        return True

    def mask_fn(self, q_len, k_len, device=None, q_offset=0):
        S, back = self.size, self.back
        return lambda b, h, q, k: (k <= q) & (k >= (torch.div(q, S, rounding_mode="floor") - back) * S)


def _lm(S, positions="xl", eval_length=None, type_="mhsa"):
    torch.manual_seed(0)
    attention = {"type": type_, "pattern": "causal" if type_ == "mhsa" else "window", "positions": positions}
    if type_ == "longformer":
        attention["window"] = 64
    return LongformerCharLM(vocab_size=11, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=[64, 64],
                            max_tokens=256, dropout=0.0, attention=attention,
                            memory={"length": S, "eval_length": eval_length or S})


def _long_forward(lm, tokens, S, back):
    for layer in lm.encoder.layers:
        pattern = SegmentBlocks(S, back)
        layer.attn.pattern = pattern
        if hasattr(layer.attn, "_patterns"):  # Longformer builds its head groups' patterns
            layer.attn._patterns = lambda p=pattern: [(slice(None), p)]
        layer.attn.spec.kernel = "reference"
    return lm(tokens)


@pytest.mark.parametrize("positions", ["xl", "rotary", "alibi"])
@pytest.mark.parametrize("type_", ["mhsa", "longformer"])
def test_segments_with_memory_equal_one_long_forward_with_the_block_mask(positions, type_):
    S = 5
    lm = _lm(S, positions, type_=type_).train()  # training memory length
    tokens = torch.randint(0, 11, (2, 4 * S))
    mem, parts = None, []
    for s in range(4):
        logits, mem = lm.forward_segment(tokens[:, s * S : (s + 1) * S], mem)
        parts.append(logits)
        assert all(m.shape == (2, S, 16) for m in mem)
    assert_close(torch.cat(parts, 1), _long_forward(lm, tokens, S, back=1), rtol=1e-4, atol=1e-5)


def test_no_gradient_flows_into_the_memory():
    S = 4
    lm = _lm(S).train()
    tokens = torch.randint(0, 11, (2, 2 * S))
    _, mem = lm.forward_segment(tokens[:, :S])
    assert all(not m.requires_grad and m.grad_fn is None for m in mem)
    logits, _ = lm.forward_segment(tokens[:, S:], mem)
    logits.sum().backward()  # reaches the weights through the memory's keys (W_k SG(h)), not the memory
    assert lm.encoder.layers[0].attn.qkv.weight.grad is not None


def test_evaluation_with_a_longer_memory():
    S = 4
    lm = _lm(S, eval_length=2 * S).eval()
    tokens = torch.randint(0, 11, (2, 5 * S))
    mem, parts = None, []
    with torch.no_grad():
        for s in range(5):
            logits, mem = lm.forward_segment(tokens[:, s * S : (s + 1) * S], mem)
            parts.append(logits)
        assert mem[0].shape == (2, 2 * S, 16)
        assert_close(torch.cat(parts, 1), _long_forward(lm, tokens, S, back=2), rtol=1e-4, atol=1e-5)


def test_memory_needs_relative_positions_and_a_layer_that_takes_it():
    with pytest.raises(ValueError, match="learned table"):
        LongformerCharLM(vocab_size=11, d_model=16, n_heads=2, n_layers=1, d_ff=32, window=[8], max_tokens=64,
                         attention={"positions": "learned"}, memory={"length": 8})
    with pytest.raises(ValueError, match="length and eval_length"):
        LongformerCharLM(vocab_size=11, d_model=16, n_heads=2, n_layers=1, d_ff=32, window=[8], max_tokens=64,
                         memory={"size": 8})


def test_stream_windows_continue_each_row_and_score_every_target_once():
    import numpy as np

    from tsformer.data.text.charlm import StreamSampler, StreamWindows

    ids = np.arange(1, 104, dtype=np.int64) % 250  # 103 characters: 102 targets
    sampler = StreamSampler(len(ids), context=8, streams=3, shuffle=False)
    ds = StreamWindows(ids, 8)
    items = [ds[i] for i in sampler]
    batches = [items[i : i + 3] for i in range(0, len(items), 3)]
    for t, batch in enumerate(batches):
        assert all(int(x["segment"]) == t for x in batch)
        if t:  # row r continues where it stopped
            for r in range(3):
                prev, cur = batches[t - 1][r], batch[r]
                if cur["weight"].sum() and prev["weight"].all():
                    assert int(cur["inputs"][0]) == int(prev["targets"][-1])
    targets = torch.cat([x["targets"][x["weight"] > 0] for x in items])
    assert sorted(targets.tolist()) == sorted(ids[1:].tolist())  # every target exactly once
    train = StreamSampler(len(ids), context=8, streams=2, shuffle=True, seed=0, segments=3)
    train.set_epoch(1)
    first = list(train)
    train.set_epoch(1)
    assert list(train) == first and len(first) == 6  # a function of (seed, epoch)
    long = StreamSampler(len(ids), context=8, streams=2, shuffle=True, seed=0, segments=1000)
    assert long.segments == 102 // 8  # no window past the end of the split
    assert all(stop - start == 8 for start, stop, _ in long)


@pytest.mark.slow
def test_transformer_xl_trains_segment_by_segment(tmp_path):
    from tsformer.train import compose_config, train

    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 80)
    cfg = compose_config([
        "task=charlm", f"data.path={text}", "data.context=32", "data.train_samples=32", "data.batch_size=4",
        "data.eval_batch_size=4", "data.stream=true", "model.attention.type=mhsa", "model.attention.pattern=causal",
        "model.attention.positions=xl", "model.memory.length=32", "model.memory.eval_length=64", "trainer.max_steps=4",
        "trainer.val_check_interval=4", "model.d_model=32", "model.n_heads=4", "model.d_ff=64",
        "model.window=[8,8,16]", f"run_dir={tmp_path / 'run'}", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "print_metrics=false"])
    assert 0 < train(cfg)["test/bpc"] < 8
    bad = compose_config(["task=charlm", f"data.path={text}", "data.context=32", "model.attention.type=mhsa",
                          "model.attention.pattern=causal", "model.attention.positions=xl",
                          "model.memory.length=32", "trainer.max_steps=1", f"run_dir={tmp_path / 'bad'}"])
    with pytest.raises(ValueError, match="data.stream=true"):
        train(bad)
    assert not (tmp_path / "bad").exists()  # nothing written
