"""End to end: a few steps of train(cfg) for textcls (CSV) and charlm; metrics and checkpoints."""

import json

import pytest
import torch

from tsformer.metrics import accuracy, bits_per_character, macro_f1
from tsformer.train import compose_config, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false",
         "logger=csv"]
TINY_MODEL = ["model.d_model=32", "model.n_heads=4", "model.n_layers=2", "model.d_ff=64", "model.window=[8,16]",
              "model.dilation=[1,2]"]


def test_classification_metrics_by_hand():
    assert accuracy([0, 1, 1, 2], [0, 1, 0, 2]) == 0.75
    # class 0: tp1 fp1 fn0 -> 2/3; class 1: tp1 fp0 fn1 -> 2/3; class 2: tp1 -> 1
    assert macro_f1([0, 1, 1, 2], [0, 1, 0, 2]) == pytest.approx((2 / 3 + 2 / 3 + 1) / 3)
    assert macro_f1([0, 0], [0, 0], num_classes=2) == 0.5
    assert bits_per_character(8 * torch.log(torch.tensor(2.0)).item(), 4) == pytest.approx(2.0)


@pytest.mark.slow
@pytest.mark.parametrize("model", ["longformer", "transformer_truncated"])
def test_textcls_train_end_to_end(tmp_path, model):
    data = tmp_path / "docs.jsonl"
    lines = []
    for i in range(48):
        lab = "pos" if i % 2 else "neg"
        word = "good great fine" if lab == "pos" else "bad awful poor"
        lines.append(json.dumps({"body": f"{word} film number {i} " * (3 + i % 5), "y": lab}))
    data.write_text("\n".join(lines) + "\n")
    run = tmp_path / "run"
    cfg = compose_config(["task=textcls", f"model={model}", f"data.path={data}", "data.text_field=body",
                          "data.label_field=y", "data.max_tokens=64", "data.vocab_size=60", "data.batch_size=8",
                          "trainer.max_steps=4", "trainer.val_check_interval=2", f"run_dir={run}", *QUIET,
                          *TINY_MODEL])
    metrics = train(cfg)
    for k in ("test/accuracy", "test/f1", "baseline/tfidf_lr/accuracy", "baseline/tfidf_lr/f1", "train/seconds"):
        assert k in metrics and 0 <= metrics[k] <= (1 if "seconds" not in k else 1e6)
    assert json.loads((run / "metrics.json").read_text())["test/accuracy"] == metrics["test/accuracy"]
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert isinstance(ckpt["sentencepiece_model"], bytes) and ckpt["classes"] == ["neg", "pos"]
    # Easy separable data: the baseline must solve it.
    assert metrics["baseline/tfidf_lr/accuracy"] == 1.0


@pytest.mark.slow
@pytest.mark.parametrize(("task", "model"), [("hyperpartisan", "longformer"), ("imdb", "transformer_truncated")])
def test_shipped_samples_train_with_task_defaults(tmp_path, task, model):
    """The task configs as shipped (data, tokenizer, model, pooling), cut to a few steps."""
    run = tmp_path / "run"
    cfg = compose_config([f"task={task}", f"model={model}", "trainer.max_steps=2", "trainer.val_check_interval=1",
                          f"run_dir={run}", *QUIET])
    assert cfg.model.pooling == "mean"
    assert cfg.model.token_dropout == (0.2 if task == "hyperpartisan" else 0.0)
    metrics = train(cfg)
    assert 0 <= metrics["test/accuracy"] <= 1 and 0 <= metrics["baseline/tfidf_lr/accuracy"] <= 1
    assert (run / "checkpoints" / "best.ckpt").exists()


def test_textcls_bad_data_fails_before_writing(tmp_path):
    data = tmp_path / "docs.csv"
    data.write_text("text,label\ngood,1\nbad\n")
    run = tmp_path / "run"
    from tsformer.data.errors import DataError

    with pytest.raises(DataError, match="row 3"):
        train(compose_config(["task=textcls", f"data.path={data}", f"run_dir={run}", *QUIET]))
    assert not run.exists()


@pytest.mark.slow
def test_charlm_train_end_to_end(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 60)
    run = tmp_path / "run"
    cfg = compose_config(["task=charlm", f"data.path={text}", "data.context=64", "data.train_samples=64",
                          "data.batch_size=8", "trainer.max_steps=6", "trainer.val_check_interval=3",
                          "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.window=[8,8,16]",
                          f"run_dir={run}", *QUIET])
    assert cfg.model._target_.endswith("LongformerCharLM")
    metrics = train(cfg)
    assert 0 < metrics["test/bpc"] < 8
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["char_vocab"] == "".join(sorted(set(text.read_text())))


def test_pgbooks_train_end_to_end_on_the_shipped_excerpt(tmp_path):
    """task=pgbooks as shipped (the excerpt folder, PROVENANCE split), cut to a few steps: the
    vocabulary in the checkpoint is that of the training books, the test book scored."""
    from tsformer.data.text.books import read_book
    from tsformer.train import REPO_ROOT

    run = tmp_path / "run"
    cfg = compose_config(["task=pgbooks", "data.context=64", "data.train_samples=32", "data.batch_size=8",
                          "data.eval_batch_size=64", "trainer.max_steps=3", "trainer.val_check_interval=3",
                          "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.window=[8,8,16]",
                          f"run_dir={run}", *QUIET])
    assert cfg.task_name == "pgbooks" and cfg.data.path.endswith("data/pgbooks_excerpt") and cfg.data.split is None
    metrics = train(cfg)
    assert 0 < metrics["test/bpc"] < 10
    train_text = "\n\n".join(read_book(REPO_ROOT / "data/pgbooks_excerpt" / f"{b}.txt")
                             for b in ("pride_and_prejudice", "bleak_house"))
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert ckpt["char_vocab"] == "".join(sorted(set(train_text)))
