"""What a run leaves to look at (tsformer/plots.py): the settings, the drawing functions, and
a few training steps per task family that must leave their pictures and samples in plots/."""

import json
import re

import numpy as np
import pytest

from tests.conftest import make_long_csv
from tests.data.speech_fixtures import make_librispeech
from tests.test_train import TINY as FORECAST_TINY
from tsformer.plots import (
    confusion_matrix,
    curve_panels,
    forecast_fans,
    learning_curves,
    plot_settings,
    png_size,
    read_metrics_csv,
    utterance_table,
    write_run_plots,
)
from tsformer.train import compose_config, train

CURVES = ["trainer.log_every_n_steps=1"]  # a few steps: log each, so the curves have points


def assert_png(path, lo: int = 200, hi: int = 3000):
    """A PNG (signature and IHDR) of a plausible size."""
    assert path.is_file(), path
    w, h = png_size(path)
    assert lo <= w <= hi and lo <= h <= hi, (path.name, w, h)


# -- settings ---------------------------------------------------------------------------
def test_plots_config_spellings():
    """plots=false turns them off; plots.series / plots.max change the defaults."""
    assert plot_settings(compose_config([]).plots, seed=3) == {"series": 3, "max": 7, "seed": 3}
    assert plot_settings(compose_config(["plots=false"]).plots) is None
    assert plot_settings(compose_config(["plots.enabled=false"]).plots) is None
    assert plot_settings(compose_config(["plots=true"]).plots) == {"series": 3, "max": 7, "seed": 0}
    assert plot_settings(compose_config(["plots.series=1", "plots.max=2"]).plots) == {"series": 1, "max": 2, "seed": 0}
    for bad in ({"series": 0}, {"colour": 1}, "yes"):
        with pytest.raises(ValueError, match="plots"):
            plot_settings(bad)


# -- drawing ----------------------------------------------------------------------------
def test_png_size_reads_the_header(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + (640).to_bytes(4, "big") + (480).to_bytes(4, "big"))
    assert png_size(p) == (640, 480)
    p.write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(ValueError, match="not a PNG"):
        png_size(p)


def test_learning_curves_from_a_csv_logger_file(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,train/bpc,val/bpc,train/skipped_steps,test/bpc\n"
                   "0,0,3.0,4.3,,0,\n0,1,2.5,3.6,,0,\n0,1,,,3.9,,\n0,2,2.0,2.9,,0,\n0,3,,,,,3.1\n")
    curves = read_metrics_csv(csv)
    assert curves["val/bpc"][0].tolist() == [1] and curves["train/loss"][1].tolist() == [3.0, 2.5, 2.0]
    assert curve_panels(curves) == [("bpc", ["train/bpc", "val/bpc"])]  # bpc stands for the loss
    curves.pop("train/bpc"), curves.pop("val/bpc")
    more = {**curves, "val/cer": curves["train/loss"], "val/wer": curves["train/loss"]}
    assert curve_panels(more) == [("loss", ["train/loss"]), ("cer", ["val/cer"]), ("wer", ["val/wer"])]
    assert curve_panels(more, lead="wer") == [("loss", ["train/loss"]), ("wer", ["val/wer"]), ("cer", ["val/cer"])]
    assert_png(learning_curves(curves, tmp_path / "c.png"))
    assert learning_curves({"test/bpc": curves["test/bpc"]}, tmp_path / "none.png") is None


def test_forecast_fans_and_confusion_matrix_draw_valid_pngs(tmp_path):
    times = np.arange("2014-09-01T00", "2014-09-03T00", dtype="datetime64[h]")
    obs = np.sin(np.arange(48) / 4)
    obs[5] = np.nan
    win = {"times": times[24:], "q10": obs[24:] - 1, "q50": obs[24:], "q90": obs[24:] + 1}
    assert_png(forecast_fans([{"title": "a", "times": times, "observed": obs, "windows": [win]}] * 2,
                             tmp_path / "f.png"))
    steps = np.arange(48)  # not datetimes: step numbers
    assert_png(forecast_fans([{"title": "b", "times": steps, "observed": obs, "windows": [{**win, "times": steps[24:]}]}],
                             tmp_path / "g.png"))
    for n in (2, 25):
        counts = np.random.default_rng(0).integers(0, 9, (n, n))
        assert_png(confusion_matrix(counts, [f"class {i}" for i in range(n)], tmp_path / f"c{n}.png"))


def test_utterance_table_lists_worst_and_best(tmp_path):
    rows = [{"split": "test", "id": f"u{i}", "ref": "ONE TWO", "hyp": "ONE" if i % 2 else "ONE TWO",
             "errors": i % 2, "words": 2} for i in range(6)]
    text = utterance_table(rows, 2, tmp_path / "u.txt").read_text()
    assert "== test: 6 utterances, WER 0.250 (3 word errors in 12 reference words)" in text
    worst, best = text.split("-- worst 2")[1].split("-- best 2")
    assert worst.count("WER 0.500") == 2 and best.count("WER 0.000") == 2
    assert worst.index("u1") < worst.index("u3") and best.index("u0") < best.index("u2")
    assert "  REF: ONE TWO\n  HYP: ONE\n" in worst
    assert "all, worst first" in utterance_table(rows, 3, tmp_path / "v.txt").read_text()


def test_a_picture_that_fails_is_reported_not_raised(tmp_path, caplog):
    class Broken:
        def write_plots(self, out_dir, settings):
            raise RuntimeError("no canvas")

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss\n0,0,1.0\n0,1,0.5\n")
    written = write_run_plots(Broken(), tmp_path / "plots", {"series": 1, "max": 1, "seed": 0}, csv)
    assert [p.name for p in written] == ["learning_curves.png"]
    assert "Broken not written (RuntimeError: no canvas)" in caplog.text


def test_drawing_needs_no_display(tmp_path):
    """No pyplot, no backend choice: an interactive MPLBACKEND and no DISPLAY still draw."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"
    code = ("import numpy as np; from tsformer.plots import learning_curves as f; "
            f"f({{'train/loss': (np.arange(3), np.ones(3))}}, {str(tmp_path / 'c.png')!r})")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=120)
    assert_png(tmp_path / "c.png")


# -- a few training steps per task family -------------------------------------------------
def _forecast_cfg(tmp_path, run, *extra):
    data = tmp_path / "series.csv"
    if not data.exists():
        make_long_csv(data)
    return compose_config(FORECAST_TINY + CURVES + [f"data.path={data}", f"run_dir={tmp_path / run}", *extra])


def test_forecasting_run_leaves_fans_and_curves_and_plots_change_no_metric(tmp_path):
    with_plots = train(_forecast_cfg(tmp_path, "on", "plots.series=2", "plots.max=1"))
    plots = tmp_path / "on" / "plots"
    assert sorted(p.name for p in plots.iterdir()) == ["forecasts.png", "learning_curves.png"]
    for p in plots.iterdir():
        assert_png(p)
    without = train(_forecast_cfg(tmp_path, "off", "plots=false"))
    assert not (tmp_path / "off" / "plots").exists()
    with_plots.pop("train/seconds"), without.pop("train/seconds")
    assert with_plots == without
    assert json.loads((tmp_path / "on" / "metrics.json").read_text())["test/crps"] == without["test/crps"]


def test_forecasting_panels_keep_the_chosen_series_and_windows(tmp_path, monkeypatch):
    """plots.series=1, plots.max=2: one series, its first two test windows, observed values
    from one horizon before the first to the end of the second."""
    import tsformer.tasks.forecasting as fc

    cfg = _forecast_cfg(tmp_path, "run", "plots.series=1", "plots.max=2")
    seen, real = {}, fc.forecast_panels

    def spy(dm, windows):
        seen["panels"] = real(dm, windows)
        return seen["panels"]

    monkeypatch.setattr(fc, "forecast_panels", spy)
    train(cfg)
    (panel,) = seen["panels"]
    assert panel["title"] == "series S0" and len(panel["windows"]) == 2
    h = cfg.data.horizon
    assert len(panel["times"]) == len(panel["observed"]) == 3 * h  # test_stride == horizon
    assert panel["windows"][0]["times"][0] == np.datetime64("2014-08-05T00:00")
    w = panel["windows"][0]
    assert np.all(w["q10"] <= w["q50"]) and np.all(w["q50"] <= w["q90"])


def test_speech_run_leaves_an_utterance_table_and_curves(tmp_path):
    from tests.tasks.test_asr_e2e import TINY as ASR_TINY

    root = make_librispeech(tmp_path / "LibriSpeech", utts=3)
    run = tmp_path / "run"
    train(compose_config(["task=librispeech", "model=conformer", f"data.root={root}", f"run_dir={run}",
                          "data.tokenizer.type=char", "plots.max=2", *ASR_TINY, *CURVES]))
    text = (run / "plots" / "utterances.txt").read_text()
    for split in ("dev", "test"):
        assert f"== {split}: 6 utterances, WER " in text
    assert text.count("-- worst 2") == 2 and text.count("-- best 2") == 2 and text.count("  REF: ") == 8
    assert_png(run / "plots" / "learning_curves.png")
    panels = curve_panels(read_metrics_csv(run / "logs" / "metrics.csv"), lead="wer")
    assert [m for m, _ in panels] == ["loss", "wer", "cer"] and panels[0][1] == ["train/loss", "val/loss"]


def test_text_classification_run_leaves_a_confusion_matrix_and_curves(tmp_path):
    data = tmp_path / "docs.csv"
    rows = ["text,label"] + [f"{w} film number {i},{lab}" for i in range(30)
                             for w, lab in [(("good great", "pos"), ("bad awful", "neg"), ("so so", "meh"))[i % 3]]]
    data.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    train(compose_config(["task=textcls", f"data.path={data}", "data.max_tokens=32", "data.vocab_size=40",
                          "data.baseline=false", "model.d_model=16", "model.n_heads=2", "model.n_layers=1",
                          "model.d_ff=32", "model.window=[8]", "model.dilation=[1]", "trainer.max_steps=3",
                          "trainer.val_check_interval=3", "trainer.enable_progress_bar=false",
                          "trainer.enable_model_summary=false", "print_metrics=false", f"run_dir={run}", *CURVES]))
    assert sorted(p.name for p in (run / "plots").iterdir()) == ["confusion_matrix.png", "learning_curves.png"]
    for p in (run / "plots").iterdir():
        assert_png(p)


def test_char_lm_run_leaves_generated_text_and_bpc_curves(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("to be or not to be, that is the question.\n" * 60)
    run = tmp_path / "run"
    train(compose_config(["task=charlm", f"data.path={text}", "data.context=64", "data.train_samples=16",
                          "data.batch_size=8", "trainer.max_steps=2", "trainer.val_check_interval=2",
                          "model.d_model=16", "model.n_heads=2", "model.d_ff=32", "model.window=[8,8,16]",
                          "model.max_tokens=128", "trainer.enable_progress_bar=false",
                          "trainer.enable_model_summary=false", "print_metrics=false", f"run_dir={run}", *CURVES]))
    out = (run / "plots" / "generated.txt").read_text()
    assert "Prompt (64 characters of the test text):" in out
    assert "Generated continuation (64 characters, temperature 0.8, seed 42):" in out
    assert re.search(r"What the test text says next \(\d+ characters\):", out)
    assert_png(run / "plots" / "learning_curves.png")
    assert dict(curve_panels(read_metrics_csv(run / "logs" / "metrics.csv")))["bpc"] == ["train/bpc", "val/bpc"]
