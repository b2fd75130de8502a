"""The char-LM ``generate`` command and the ``decode=<name>`` options (#18)."""

import pytest

from tsformer.export import load_decode, parse_args
from tsformer.generate import DEFAULTS, generate, main
from tsformer.train import compose_config, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false",
         "logger=csv"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gen")
    text = tmp / "t.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log.\n" * 40)
    cfg = compose_config(["task=charlm", f"data.path={text}", "data.context=32", "data.train_samples=64",
                          "data.batch_size=16", "trainer.max_steps=12", "trainer.val_check_interval=12",
                          "model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.d_ff=64",
                          "model.window=[8,16]", "model.dilation=[1,1]", "model.max_tokens=256",
                          f"run_dir={tmp / 'run'}", *QUIET])
    train(cfg)
    return tmp / "run"


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_every_decoder_writes_the_same_text(run, tmp_path, temperature):
    texts = {}
    for dec in ("sequential", "jacobi", "lookahead"):
        texts[dec] = generate(run=str(run), prompt="the c", length=41, temperature=temperature, seed=3,
                              decode=dec)
    assert texts["sequential"].startswith("the c") and len(texts["sequential"]) == 5 + 41
    assert texts["jacobi"] == texts["sequential"] == texts["lookahead"]
    out = tmp_path / "g.txt"
    assert main([f"run={run}", "prompt=the", "length=1", f"temperature={temperature}", "top_k=3",
                 "decode=lookahead", "decode.window=3", "decode.ngram=2", f"output={out}"]) == 0
    assert len(out.read_text()) == 4


def test_decode_options_and_help(capsys):
    args = parse_args(["decode=jacobi", "decode.block=8", "decode.early_exit.tolerance=0.01", "length=5"], DEFAULTS)
    assert args["decode"]["method"] == "jacobi" and args["decode"]["block"] == 8
    assert args["decode"]["early_exit"]["tolerance"] == 0.01 and args["length"] == 5
    assert parse_args([], DEFAULTS)["decode"]["method"] == "sequential"
    assert load_decode("lookahead", {"window": 3})["window"] == 3
    with pytest.raises(SystemExit, match=r"decode\.blok"):
        parse_args(["decode=jacobi", "decode.blok=8"], DEFAULTS)
    with pytest.raises(SystemExit, match=r"decode\.window"):  # a lookahead key on the jacobi decoder
        parse_args(["decode=jacobi", "decode.window=8"], DEFAULTS)
    with pytest.raises(SystemExit, match="decode=beam"):
        parse_args(["decode=beam"], DEFAULTS)
    with pytest.raises(SystemExit, match="lenght"):
        parse_args(["lenght=5"], DEFAULTS)
    assert main(["--help"]) == 0
    shown = capsys.readouterr().out
    assert "temperature = 0.8" in shown and "decode=sequential" in shown and "decode.<key>" in shown


def test_bad_runs_and_prompts_are_clear_errors(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # the one error policy (tsformer/cli.py): one line, status 2
        main([f"run={tmp_path / 'nope'}", "prompt=a"])
    assert e.value.code == 2 and "not found" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="prompt is empty"):
        generate(run=str(run), prompt="")
