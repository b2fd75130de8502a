"""The README's attention examples: one config schema, every network, through train(cfg)."""

from __future__ import annotations

import pytest
from hydra.utils import instantiate

from tests.conftest import make_long_csv
from tests.data.speech_fixtures import make_librispeech
from tests.test_train import TINY as FORECAST_TINY
from tsformer.nn.attention import MultiHeadSelfAttention
from tsformer.train import compose_config, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false"]

EXAMPLES = {
    "electricity_mhsa_rotary": ["task=electricity", "model.attention.type=mhsa", "model.attention.positions=rotary"],
    "charlm_relative": ["task=charlm", "model.attention.positions=relative"],
    "librispeech_window": ["task=librispeech", "model=conformer", "model.attention.pattern=window"],
    "electricity_window": ["task=electricity", "model.attention.pattern=window", "model.attention.one_sided=true",
                           "model.attention.window=16"],
    "hyperpartisan_mhsa": ["task=hyperpartisan", "model.attention.type=mhsa", "model.attention.positions=rotary"],
}


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_examples_compose_into_the_asked_layers(name):
    cfg = compose_config(EXAMPLES[name])
    att = cfg.model.attention
    kw = {k: v for k, v in cfg.model.items() if k != "_target_"}
    if name.startswith("electricity"):
        net = instantiate(cfg.model, num_series=2, num_covariates=3)
        layers = [b.attn for b in net.blocks]
    elif name.startswith("charlm"):
        net = instantiate(cfg.model, vocab_size=20)
        layers = [lay.attn for lay in net.encoder.layers]
    elif name.startswith("librispeech"):
        net = instantiate(cfg.model, input_dim=80, vocab_size=30)
        layers = [b.attn for b in net.encoder.blocks]
    else:
        kw["max_tokens"] = 128
        net = instantiate(cfg.model, vocab_size=20, num_classes=2, max_tokens=128)
        layers = [lay.attn for lay in net.encoder.layers]
    assert layers and all(layer.spec.positions == att.positions for layer in layers)
    assert all(layer.spec.pattern == att.pattern for layer in layers)
    if att.type == "mhsa":
        assert all(isinstance(layer, MultiHeadSelfAttention) for layer in layers)


@pytest.mark.slow
def test_electricity_with_mhsa_rotary_trains(tmp_path):
    data = tmp_path / "series.csv"
    make_long_csv(data)
    cfg = compose_config(FORECAST_TINY + EXAMPLES["electricity_mhsa_rotary"]
                         + [f"data.path={data}", f"run_dir={tmp_path / 'run'}"])
    assert "test/rho50" in train(cfg)


@pytest.mark.slow
def test_charlm_with_relative_positions_trains(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 60)
    cfg = compose_config(EXAMPLES["charlm_relative"] + [
        f"data.path={text}", "data.context=64", "data.train_samples=32", "data.batch_size=8", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "model.d_model=32", "model.n_heads=4", "model.d_ff=64",
        "model.window=[8,8,16]", f"run_dir={tmp_path / 'run'}", *QUIET])
    assert 0 < train(cfg)["test/bpc"] < 8


@pytest.mark.slow
def test_conformer_with_window_pattern_trains(tmp_path):
    root = make_librispeech(tmp_path / "LibriSpeech")
    cfg = compose_config(EXAMPLES["librispeech_window"] + [
        f"data.root={root}", f"run_dir={tmp_path / 'run'}", "data.tokenizer.type=char", "model.d_model=32",
        "model.n_heads=2", "model.n_layers=1", "model.d_ff=64", "model.conv_kernel=5",
        "model.subsampling_channels=8", "data.batch_size=4", "module.warmup_steps=2", "trainer.max_steps=2",
        "trainer.val_check_interval=2", *QUIET])
    assert "test/wer" in train(cfg)


# Long-context options (issue: ALiBi, adaptive span, persistent memory, Transformer-XL
# positions): each trains for a few steps in train(cfg) for charlm and electricity.
OPTIONS = {
    "alibi": ["model.attention.positions=alibi"],
    "span": ["model.attention.pattern=causal", "model.attention.span={max: 32, ramp: 8, penalty: 1e-3}"],
    "all_attention": ["model.attention.persistent=4", "model.ffn=none"],
    "xl": ["model.attention.positions=xl"],
}


@pytest.mark.slow
@pytest.mark.parametrize("option", list(OPTIONS))
def test_long_context_options_train_on_charlm(tmp_path, option):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 60)
    over = list(OPTIONS[option])
    if option == "span":
        over = ["model.attention.type=mhsa"] + over
    cfg = compose_config(["task=charlm", *over, f"data.path={text}", "data.context=64", "data.train_samples=32",
                          "data.batch_size=8", "trainer.max_steps=3", "trainer.val_check_interval=3",
                          "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.window=[8,8,16]",
                          f"run_dir={tmp_path / 'run'}", *QUIET])
    assert 0 < train(cfg)["test/bpc"] < 8


@pytest.mark.slow
@pytest.mark.parametrize("option", list(OPTIONS))
def test_long_context_options_train_on_electricity(tmp_path, option):
    data = tmp_path / "series.csv"
    make_long_csv(data)
    cfg = compose_config(FORECAST_TINY + OPTIONS[option] + [f"data.path={data}", f"run_dir={tmp_path / 'run'}"])
    assert "test/rho50" in train(cfg)


@pytest.mark.slow
def test_linformer_trains_on_text_classification(tmp_path):
    cfg = compose_config(["task=textcls", "model.attention.type=linformer", "model.attention.pattern=full", "model.attention.k=32",
                          "model.attention.sharing=layer", "trainer.max_steps=3", "trainer.val_check_interval=3",
                          f"run_dir={tmp_path / 'run'}", *QUIET])
    metrics = train(cfg)
    assert 0.0 <= metrics["test/accuracy"] <= 1.0


@pytest.mark.slow
def test_rwkv_trains_on_charlm_and_electricity(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 60)
    rwkv = ["model.attention.type=rwkv", "model.attention.pattern=causal", "model.attention.positions=none",
            "model.ffn=rwkv"]
    cfg = compose_config(["task=charlm", *rwkv, f"data.path={text}", "data.context=64", "data.train_samples=32",
                          "data.batch_size=8", "trainer.max_steps=3", "trainer.val_check_interval=3",
                          "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.window=[8,8,16]",
                          f"run_dir={tmp_path / 'lm'}", *QUIET])
    assert 0 < train(cfg)["test/bpc"] < 8
    data = tmp_path / "series.csv"
    make_long_csv(data)
    cfg = compose_config(FORECAST_TINY + ["model.attention.type=rwkv", "model.attention.pattern=causal", "model.ffn=rwkv",
                                          f"data.path={data}",
                                          f"run_dir={tmp_path / 'fc'}"])
    assert "test/rho50" in train(cfg)
