"""Masked-LM pretraining (task=mlm) and starting a classifier from its checkpoint (init_from)."""

import json

import pytest
import torch

from tsformer.data.tokenizers import SentencePieceTokenizer
from tsformer.nn.longformer import LongformerClassifier, LongformerMaskedLM
from tsformer.train import compose_config, init_weights_from, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false",
         "logger=csv"]
SIZES = ["model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.d_ff=64", "model.window=[8,16]",
         "model.dilation=[1,2]"]
ENC = dict(d_model=16, n_heads=2, n_layers=1, d_ff=32, window=[4], dilation=[1])


def test_masked_lm_predicts_masked_real_tokens_only():
    torch.manual_seed(0)
    net = LongformerMaskedLM(vocab_size=30, mask_prob=0.4, dropout=0.0, max_tokens=32, **ENC)
    tokens = torch.randint(4, 30, (3, 20))
    tokens[:, 0] = 2
    lengths = torch.tensor([20, 14, 6])
    tokens[2, 6:] = 0
    g = torch.Generator().manual_seed(5)
    nll, correct, n = net(tokens, lengths, generator=g)
    # The same draw by hand: never <cls>, never padding.
    u = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(5))
    real = torch.arange(20)[None] < lengths[:, None]
    real[:, 0] = False
    sel = (u < 0.4) & real
    assert n == sel.sum() and 0 < n < real.sum()
    h = net.encoder(tokens.masked_fill(sel, 0), lengths, (0,))
    logits = h[sel] @ net.encoder.embed.weight.T
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(logits, tokens[sel], reduction="sum"))
    assert correct == (logits.argmax(-1) == tokens[sel]).sum()
    # A seeded generator repeats the draw (evaluation is comparable between checks).
    again = net(tokens, lengths, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(again[0], nll)
    with pytest.raises(ValueError, match="mask_prob"):
        LongformerMaskedLM(vocab_size=30, mask_prob=0.0, max_tokens=32, **ENC)


def test_init_weights_from_copies_the_encoder_and_keeps_the_head(tmp_path):
    torch.manual_seed(0)
    mlm = LongformerMaskedLM(vocab_size=30, max_tokens=16, **ENC)
    path = tmp_path / "mlm.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in mlm.state_dict().items()}}, path)
    clf = LongformerClassifier(vocab_size=30, num_classes=3, max_tokens=32, **ENC)
    head = {k: v.clone() for k, v in clf.head.state_dict().items()}
    loaded = init_weights_from(clf, path)
    assert set(loaded) == set(mlm.state_dict())
    for k, v in mlm.encoder.state_dict().items():
        if k != "pos.weight":
            torch.testing.assert_close(clf.encoder.state_dict()[k], v)
    # A longer position table: the rows both have are copied, the rest keep their init.
    torch.testing.assert_close(clf.encoder.pos.weight[:16], mlm.encoder.pos.weight)
    assert not torch.equal(clf.encoder.pos.weight[16:], torch.zeros(16, 16))
    for k, v in clf.head.state_dict().items():
        torch.testing.assert_close(v, head[k])
    wider = LongformerClassifier(vocab_size=30, num_classes=3, max_tokens=32, **{**ENC, "d_model": 32, "d_ff": 64})
    with pytest.raises(ValueError, match="embed.weight has shape"):
        init_weights_from(wider, path)
    torch.save({"state_dict": {"net.other.weight": torch.zeros(2)}}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="none of its weights"):
        init_weights_from(clf, tmp_path / "other.ckpt")
    with pytest.raises(FileNotFoundError, match="init_from"):
        init_weights_from(clf, tmp_path / "missing.ckpt")


def test_tokenizer_loads_from_checkpoint_or_model_file(tmp_path):
    tok = SentencePieceTokenizer.train(["the cat sat on the mat", "a dog ran in the park"] * 20, vocab_size=40)
    torch.save({"sentencepiece_model": tok.to_bytes()}, tmp_path / "a.ckpt")
    (tmp_path / "a.model").write_bytes(tok.to_bytes())
    for name in ("a.ckpt", "a.model"):
        assert SentencePieceTokenizer.load(tmp_path / name).encode(["the cat"]) == tok.encode(["the cat"])
    torch.save({"state_dict": {}}, tmp_path / "b.ckpt")
    with pytest.raises(ValueError, match="no sentencepiece_model"):
        SentencePieceTokenizer.load(tmp_path / "b.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        SentencePieceTokenizer.load(tmp_path / "c.ckpt")


@pytest.mark.slow
def test_pretrain_then_classify_from_the_checkpoint(tmp_path):
    corpus = tmp_path / "corpus.jsonl"
    lines = [json.dumps({"text": f"the film was {w} and the plot was {w} number {i}", "label": "x"})
             for i, w in enumerate(["good", "bad", "long", "short"] * 12)]
    corpus.write_text("\n".join(lines) + "\n")
    pre = tmp_path / "pre"
    m = train(compose_config(["task=mlm", f"data.path={corpus}", "data.max_tokens=64", "data.vocab_size=60",
                              "trainer.max_steps=6", "trainer.val_check_interval=3", f"run_dir={pre}",
                              *QUIET, *SIZES]))
    assert 0 < m["test/mlm_loss"] < 10 and 0 <= m["test/mlm_accuracy"] <= 1
    assert "baseline/tfidf_lr/accuracy" not in m
    ckpt = pre / "checkpoints" / "best.ckpt"
    pre_ckpt = torch.load(ckpt, weights_only=True)
    proto = pre_ckpt["sentencepiece_model"]
    assert "classes" not in pre_ckpt  # the corpus's labels are not the classifier's

    docs = tmp_path / "docs.csv"
    docs.write_text("text,label\n" + "\n".join(f"a {'good' if i % 2 else 'bad'} film {i},{i % 2}"
                                                for i in range(40)) + "\n")
    run = tmp_path / "run"
    cfg = compose_config(["task=textcls", f"data.path={docs}", "data.max_tokens=64", f"init_from={ckpt}",
                          "trainer.max_steps=0", f"run_dir={run}", *QUIET, *SIZES])
    assert cfg.data.tokenizer == str(ckpt)
    train(cfg)
    out = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert out["sentencepiece_model"] == proto  # the pretraining run's tokenizer, not a new one
    pre_state = pre_ckpt["state_dict"]
    # No step taken: the classifier's encoder is the pretrained one.
    torch.testing.assert_close(out["state_dict"]["net.encoder.embed.weight"], pre_state["net.encoder.embed.weight"])
    torch.testing.assert_close(out["state_dict"]["net.encoder.layers.1.ff.0.weight"],
                               pre_state["net.encoder.layers.1.ff.0.weight"])


def test_init_from_a_mismatched_checkpoint_fails_before_writing(tmp_path):
    docs = tmp_path / "docs.csv"
    docs.write_text("text,label\n" + "\n".join(f"a {'good' if i % 2 else 'bad'} film {i},{i % 2}"
                                                for i in range(40)) + "\n")
    tok = SentencePieceTokenizer.train([f"a good film {i}" for i in range(40)], vocab_size=40)
    bad = tmp_path / "bad.ckpt"
    torch.save({"sentencepiece_model": tok.to_bytes(),
                "state_dict": {"net.encoder.embed.weight": torch.zeros(3, 3)}}, bad)
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="encoder.embed.weight has shape"):
        train(compose_config(["task=textcls", f"data.path={docs}", f"init_from={bad}", f"run_dir={run}", *QUIET]))
    assert not run.exists()
