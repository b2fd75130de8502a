"""model=mosaicbert (Portes et al. 2023): the recipe's config, parameters equal to
longformer_mlm, bf16 autocast, and a few training steps for task=mlm and a classifier."""

import pytest
import torch
from hydra.utils import instantiate

import tsformer.nn.precision as precision
from tsformer.nn.longformer import LongformerClassifier, LongformerEncoder, LongformerMaskedLM
from tsformer.train import compose_config, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false",
         "logger=csv", "plots.enabled=false"]
TINY = ["model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.d_ff=96", "model.window=[8,16]",
        "data.max_tokens=96", "data.vocab_size=200"]


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def build(task, model):
    cfg = compose_config([f"task={task}", f"model={model}"])
    return cfg, instantiate(cfg.model, _convert_="all", vocab_size=8000, num_classes=2)


def test_mosaicbert_recipe_and_equal_parameters():
    cfg, mosaic = build("mlm", "mosaicbert")
    _, base = build("mlm", "longformer_mlm")
    m = cfg.model
    assert (m.attention.positions, m.ffn, m.unpad, m.mask_prob, m.autocast) == ("alibi", "glu", True, 0.3, "bf16")
    assert isinstance(mosaic, LongformerMaskedLM) and mosaic.mask_prob == 0.3 and mosaic.encoder.unpad
    assert mosaic.encoder.pos is None  # ALiBi: no position table
    assert abs(n_params(mosaic) - n_params(base)) / n_params(base) < 0.05
    _, clf = build("imdb", "mosaicbert")
    assert isinstance(clf, LongformerClassifier) and clf.encoder.unpad
    # The pretraining checkpoint's encoder is the classifier's.
    assert set(mosaic.state_dict()) == {k for k in clf.state_dict() if not k.startswith("head.")}


def test_bf16_autocast_where_available(monkeypatch):
    torch.manual_seed(0)
    kw = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, window=[4], max_tokens=16, dropout=0.0, ffn="glu",
              unpad=True, attention={"positions": "alibi"})
    ref = LongformerEncoder(30, **kw)
    bf = LongformerEncoder(30, **kw, autocast="bf16")
    bf.load_state_dict(ref.state_dict())
    tokens, lengths = torch.randint(1, 30, (3, 11)), torch.tensor([11, 4, 1])
    monkeypatch.setattr(precision, "bf16_available", lambda device: False)
    torch.testing.assert_close(bf(tokens, lengths), ref(tokens, lengths))  # no native bf16: fp32
    monkeypatch.setattr(precision, "bf16_available", lambda device: True)
    h = bf(tokens, lengths)
    assert h.dtype == torch.float32  # the final LayerNorm computes in fp32
    assert not torch.equal(h, ref(tokens, lengths))  # the matmuls did run in bf16
    torch.testing.assert_close(h, ref(tokens, lengths), rtol=0.1, atol=0.1)
    h.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in bf.parameters() if p.grad is not None)


@pytest.mark.parametrize("task", ["mlm", "hyperpartisan"])
def test_mosaicbert_trains(tmp_path, task):
    """A few steps of train(cfg) on the shipped samples (IMDB for mlm, Hyperpartisan)."""
    run = tmp_path / "run"
    m = train(compose_config([f"task={task}", "model=mosaicbert", "trainer.max_steps=3", "trainer.val_check_interval=3",
                              "data.batch_size=4", "data.max_train_docs=24", f"run_dir={run}", *QUIET, *TINY]))
    assert m["train/steps"] == 3
    if task == "mlm":
        assert 0 < m["test/mlm_loss"] < 10 and 0 <= m["test/mlm_accuracy"] <= 1
    else:
        assert 0 <= m["test/accuracy"] <= 1
    assert (run / "checkpoints" / "best.ckpt").exists()
