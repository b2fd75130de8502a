"""Early exit (CALM) selected at inference through the commands (#18): ``tsformer.generate``,
``tsformer.forecast`` and ``tsformer.transcribe`` with ``decode.early_exit.*`` on tiny models
trained here with ``module.exit_heads=true``: a calibrated tolerance that exits reports fewer
layers than the model has; a threshold that never exits gives exactly the full output."""

import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.data.test_user_csv import long_frame, write
from tsformer.export import export, load_decode, parse_args
from tsformer.train import compose_config, train

QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "print_metrics=false",
         "logger=csv", "plots=false"]


def layers_used(err: str) -> tuple[float, int]:
    """``(average, of)`` from the command's early-exit line on stderr."""
    m = re.search(r"early exit \(\w+\): .*; ([0-9.]+) of (\d+) layers on average", err)
    assert m, err
    return float(m.group(1)), int(m.group(2))


def without_exit_heads(run, dest):
    """A copy of a run whose config says it was trained without exit heads."""
    shutil.copytree(run, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    cfg["module"]["exit_heads"] = False
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg))
    return dest


# -- char LM: python -m tsformer.generate ---------------------------------------------------------


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lm_exit")
    text = tmp / "t.txt"
    text.write_text("the cat sat on the mat. the dog sat on the log.\n" * 40)
    cfg = compose_config(["task=charlm", f"data.path={text}", "data.context=32", "data.train_samples=64",
                          "data.batch_size=16", "trainer.max_steps=12", "trainer.val_check_interval=12",
                          "model.d_model=32", "model.n_heads=2", "model.n_layers=3", "model.d_ff=64",
                          "model.window=[8,8,8]", "model.dilation=[1,1,1]", "model.max_tokens=128",
                          "module.exit_heads=true", f"run_dir={tmp / 'run'}", *QUIET])
    train(cfg)
    return tmp, tmp / "run", text


def test_generate_calibrates_and_exits_early(lm, capsys):
    from tsformer.generate import main

    tmp, run, text = lm
    common = [f"run={run}", "prompt=the c", "length=20", "temperature=0"]
    assert main([*common, "decode.early_exit.tolerance=0.9", "decode.early_exit.delta=0.5",
                 f"decode.early_exit.calibration={text}", "decode.early_exit.examples=12"]) == 0
    err = capsys.readouterr().err
    avg, n = layers_used(err)
    assert n == 3 and avg < 3 and "calibrated on 12 prompts" in err and "threshold" in err
    # The classifier measure trains its classifier on held-out prompts first.
    assert main([*common, "decode.early_exit.measure=classifier", "decode.early_exit.threshold=0",
                 f"decode.early_exit.calibration={text}", "decode.early_exit.examples=4"]) == 0
    assert layers_used(capsys.readouterr().err) == (1.0, 3)
    # Deferring the skipped layers: same exits, the text the heads give on the full model's states.
    assert main([*common, "decode.early_exit.threshold=0", "decode.early_exit.skipped=defer"]) == 0
    out = capsys.readouterr()
    assert layers_used(out.err) == (1.0, 3) and "skipped layers deferred" in out.err


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_generate_threshold_that_never_exits_is_the_full_model(lm, capsys, temperature):
    from tsformer.generate import main

    _, run, _ = lm
    common = [f"run={run}", "prompt=the d", "length=25", f"temperature={temperature}", "seed=2"]
    assert main(common) == 0
    full = capsys.readouterr().out
    assert main([*common, "decode.early_exit.threshold=inf", "decode.early_exit.measure=state"]) == 0
    out = capsys.readouterr()
    assert out.out == full and layers_used(out.err) == (3.0, 3)
    assert main([*common, "decode.early_exit.threshold=0"]) == 0  # softmax margins are >= 0: exit at layer 1
    assert layers_used(capsys.readouterr().err) == (1.0, 3)
    # The position-adjusted threshold only lowers thresholds: inf stays the full model.
    assert main([*common, "decode.early_exit.threshold=inf", "decode.early_exit.position_temp=4"]) == 0
    out = capsys.readouterr()
    assert out.out == full and layers_used(out.err) == (3.0, 3)
    assert main([*common, "decode.early_exit.threshold=inf", "decode.early_exit.skipped=defer"]) == 0
    out = capsys.readouterr()
    assert out.out == full and layers_used(out.err) == (3.0, 3)


def test_generate_early_exit_errors(lm, tmp_path, capsys):
    from tsformer.generate import main

    _, run, text = lm
    plain = without_exit_heads(run, tmp_path / "plain")
    cases = [
        ([f"run={plain}", "decode.early_exit.threshold=0.5"], "module.exit_heads=true"),
        ([f"run={run}", "decode.early_exit.tolerance=0.01"], "decode.early_exit.calibration"),
        ([f"run={run}", "decode.early_exit.tolerance=2", f"decode.early_exit.calibration={text}"], "must lie in"),
        ([f"run={run}", "decode=jacobi", "decode.early_exit.threshold=0.5"], "use decode=sequential"),
        ([f"run={run}", "decode.early_exit.measure=state"], "decode.early_exit.tolerance"),
        ([f"run={run}", "decode.early_exit.threshold=0.5", "decode.early_exit.measure=loud"], "softmax, state"),
        ([f"run={run}", "decode.early_exit.threshold=0.5", "decode.early_exit.position_temp=0"], "must be > 0"),
        ([f"run={run}", "decode.early_exit.threshold=0.5", "decode.early_exit.skipped=later"], "copy, defer"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            main([*argv, "prompt=the", "length=3"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_charlm_generate_keeps_its_outputs_for_a_fixed_seed():
    """CharLMModule.generate runs the shared decoder (nn/decoding.decode_tokens); its seeded
    samples are what the module's own sampler gave before (recorded), with and without the
    cache, and with a sliding window past max_tokens."""
    from tsformer.nn.decoding import gumbel_noise, jacobi_tokens
    from tsformer.nn.early_exit import NEVER, EarlyExit
    from tsformer.nn.longformer import LongformerCharLM
    from tsformer.tasks.charlm import CharLMModule

    torch.manual_seed(0)
    net = LongformerCharLM(vocab_size=23, d_model=16, n_heads=2, n_layers=2, d_ff=32, window=6, dilation=1,
                           max_tokens=64, dropout=0.0).eval()
    m = CharLMModule(net).eval()
    prompt = torch.tensor([[1, 5, 7, 2, 9], [3, 3, 4, 8, 1]])
    greedy = [[18, 18, 18, 18, 21, 21, 21, 21, 21, 21, 5, 5], [21, 21, 21, 21, 21, 21, 5, 5, 5, 18, 18, 18]]
    sampled = [[16, 4, 7, 18, 16, 13, 16, 14, 7, 13, 8, 20], [12, 15, 17, 18, 13, 13, 12, 19, 1, 4, 18, 15]]
    for cache in (True, False):
        for t, want in ((0.0, greedy), (0.8, sampled)):
            assert m.generate(prompt, 12, t, torch.Generator().manual_seed(7), cache=cache)[:, 5:].tolist() == want
    slid = m.generate(prompt, 70, 0.8, torch.Generator().manual_seed(7))
    assert slid[:, -8:].tolist() == [[0, 18, 20, 7, 21, 17, 10, 12], [22, 11, 5, 17, 12, 16, 17, 16]]
    # The same entry point serves the parallel decoders and early exit.
    noise = gumbel_noise(2, 12, 23, torch.Generator().manual_seed(1))
    seq = m.generate(prompt, 12, 0.8, noise=noise)
    assert torch.equal(m.generate(prompt, 12, 0.8, noise=noise, decode={"method": "lookahead"}), seq)
    assert torch.equal(jacobi_tokens(net, prompt, 12, temperature=0.8, noise=noise)[0], seq)
    assert torch.equal(m.generate(prompt, 12, 0.8, noise=noise, early_exit=EarlyExit("softmax", NEVER)), seq)
    with pytest.raises(ValueError, match="decode=sequential"):
        m.generate(prompt, 4, 0.0, decode={"method": "jacobi"}, early_exit=EarlyExit("softmax", 0.5))


# -- forecasts: python -m tsformer.forecast -------------------------------------------------------


@pytest.fixture(scope="module")
def fc(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fc_exit")
    data = write(tmp, long_frame(n_series=3))
    held = write(tmp, long_frame(n_series=3, seed=5), "held_out.csv")
    run = tmp / "run"
    cfg = compose_config(["task=csv", f"data.path={data}", "data.time_col=time", "data.id_col=series",
                          "data.target=value", "data.context_length=24", "data.horizon=6", "data.batch_size=16",
                          "model.d_model=16", "model.n_heads=2", "model.n_layers=2", "model.d_ff=32",
                          "module.num_samples=8", "module.exit_heads=true", "trainer.max_steps=4",
                          "trainer.val_check_interval=2", f"run_dir={run}", *QUIET])
    train(cfg)
    model = export(run, tmp / "model.tsf")
    return tmp, data, held, run, model


def test_forecast_calibrates_and_exits_early(fc, tmp_path, capsys):
    from tsformer.forecast import main

    _, data, held, _, model = fc
    common = [f"model={model}", f"input={data}", "progress=false", "seed=1", f"output={tmp_path / 'f.csv'}"]
    assert main([*common, "decode.early_exit.tolerance=0.9", "decode.early_exit.delta=0.5",
                 f"decode.early_exit.calibration={held}", "decode.early_exit.examples=9"]) == 0
    err = capsys.readouterr().err
    avg, n = layers_used(err)
    assert n == 2 and avg < 2 and "calibrated on 9 windows" in err
    assert len(pd.read_csv(tmp_path / "f.csv")) == 3 * 6
    assert main([*common, "decode.early_exit.measure=classifier", "decode.early_exit.threshold=0",
                 f"decode.early_exit.calibration={held}", "decode.early_exit.examples=6"]) == 0
    assert layers_used(capsys.readouterr().err) == (1.0, 2)


def test_forecast_threshold_that_never_exits_is_the_full_model(fc, tmp_path, capsys):
    from tsformer.forecast import main

    _, data, _, run, model = fc
    common = [f"model={model}", f"input={data}", "progress=false", "seed=3"]
    assert main([*common, f"output={tmp_path / 'full.csv'}"]) == 0
    assert main([*common, f"output={tmp_path / 'never.csv'}", "decode.early_exit.threshold=inf"]) == 0
    assert layers_used(capsys.readouterr().err) == (2.0, 2)
    full, never = pd.read_csv(tmp_path / "full.csv"), pd.read_csv(tmp_path / "never.csv")
    pd.testing.assert_frame_equal(full, never)
    # Models trained without exit heads: one clear line.
    plain = export(without_exit_heads(run, tmp_path / "plain"), tmp_path / "plain.tsf")
    assert main([f"model={plain}", f"input={data}", "progress=false", "decode.early_exit.threshold=0.5",
                 f"output={tmp_path / 'x.csv'}"]) == 2
    err = capsys.readouterr().err
    assert "module.exit_heads=true" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:  # the forecaster's outputs are not tokens
        main([*common, "decode.early_exit.threshold=0.5", "decode.early_exit.measure=softmax"])
    assert e.value.code == 2 and "state, classifier" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # the position-adjusted threshold is for text generation
        main([*common, "decode.early_exit.threshold=0.5", "decode.early_exit.position_temp=4"])
    assert e.value.code == 2 and "position_temp" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # deferring skipped layers too
        main([*common, "decode.early_exit.threshold=0.5", "decode.early_exit.skipped=defer"])
    assert e.value.code == 2 and "skipped=defer" in capsys.readouterr().err


# -- speech: python -m tsformer.transcribe --------------------------------------------------------


@pytest.fixture(scope="module")
def asr(tmp_path_factory):
    from tests.data.speech_fixtures import make_librispeech

    tmp = tmp_path_factory.mktemp("asr_exit")
    root = make_librispeech(tmp / "LibriSpeech", utts=2)
    run = tmp / "run"
    cfg = compose_config(["task=librispeech", "model=conformer", f"data.root={root}", f"run_dir={run}",
                          "data.tokenizer.type=char", "model.d_model=16", "model.n_heads=2", "model.n_layers=2",
                          "model.d_ff=32", "model.conv_kernel=5", "model.subsampling_channels=4",
                          "data.batch_size=4", "module.warmup_steps=1", "module.decoding.method=greedy",
                          "module.exit_heads=true", "trainer.max_steps=2", "trainer.val_check_interval=2", *QUIET])
    train(cfg)
    return tmp, root, run / "checkpoints" / "best.ckpt"


def test_transcribe_calibrates_and_exits_early(asr, capsys):
    from tsformer.transcribe import main

    _, root, ckpt = asr
    main([f"ckpt={ckpt}", f"audio={root / 'test-clean'}", "decode.early_exit.tolerance=0.9",
          "decode.early_exit.delta=0.5", f"decode.early_exit.calibration={root / 'dev-clean'}"])
    out = capsys.readouterr()
    avg, n = layers_used(out.err)
    assert n == 2 and avg < 2 and "calibrated on 4 recordings" in out.err
    assert len(out.out.strip().splitlines()) == 4


def test_transcribe_classifier_measure(asr, capsys):
    """The classifier is fitted inside the command's no_grad calibration (it once failed there)."""
    from tsformer.transcribe import main

    _, root, ckpt = asr
    main([f"ckpt={ckpt}", f"audio={root / 'test-clean'}", "decode.early_exit.measure=classifier",
          "decode.early_exit.threshold=0", f"decode.early_exit.calibration={root / 'dev-clean'}"])
    out = capsys.readouterr()
    avg, n = layers_used(out.err)
    assert n == 2 and avg == 1  # threshold 0: every utterance leaves after the first layer
    assert len(out.out.strip().splitlines()) == 4


def test_transcribe_threshold_that_never_exits_is_the_full_model(asr, tmp_path, capsys):
    from tsformer.transcribe import main

    _, root, ckpt = asr
    audio = root / "test-clean"
    main([f"ckpt={ckpt}", f"audio={audio}"])
    full = capsys.readouterr().out
    main([f"ckpt={ckpt}", f"audio={audio}", "decode.early_exit.threshold=inf"])
    out = capsys.readouterr()
    assert out.out == full and layers_used(out.err) == (2.0, 2)
    main([f"ckpt={ckpt}", f"audio={audio}", "decode.early_exit.threshold=0"])  # margins >= 0: exit at block 1
    assert layers_used(capsys.readouterr().err) == (1.0, 2)
    # A checkpoint trained without exit heads: one clear line.
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["exit_heads"] = False
    torch.save(state, tmp_path / "plain.ckpt")
    with pytest.raises(SystemExit) as e:
        main([f"ckpt={tmp_path / 'plain.ckpt'}", f"audio={audio}", "decode.early_exit.threshold=0.5"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "module.exit_heads=true" in err and len(err.strip().splitlines()) == 1


def test_decode_keys_parse_for_every_command():
    from tsformer.forecast import DEFAULTS as FORECAST
    from tsformer.generate import DEFAULTS as GENERATE
    from tsformer.transcribe import parse_args as transcribe_args

    for defaults in (FORECAST, GENERATE):
        args = parse_args(["decode.early_exit.tolerance=0.01", "decode.early_exit.calibration=x.txt"], defaults)
        assert args["decode"]["early_exit"]["tolerance"] == 0.01
        assert args["decode"]["early_exit"]["calibration"] == "x.txt"
    args = transcribe_args(["ckpt=a", "audio=b", "decode.early_exit.threshold=0.7", "decode.early_exit.examples=5"])
    assert args["decode"]["early_exit"]["threshold"] == 0.7 and args["decode"]["early_exit"]["examples"] == 5
    with pytest.raises(SystemExit, match="decode.early_exit.tolerence"):
        transcribe_args(["ckpt=a", "audio=b", "decode.early_exit.tolerence=0.7"])
    with pytest.raises(SystemExit, match="decode=sequential"):
        transcribe_args(["ckpt=a", "audio=b", "decode=jacobi"])
    assert load_decode("sequential")["early_exit"]["threshold"] is None
    assert np.isinf(float(load_decode("sequential", ["early_exit.threshold=inf"])["early_exit"]["threshold"]))
