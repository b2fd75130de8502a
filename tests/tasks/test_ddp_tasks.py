"""trainer=ddp composes with the text and speech tasks: 2 gloo processes score every test item once
and reduce over ranks, so with the same weights they report a single process's metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.tasks.test_text_tasks import QUIET, TINY_MODEL
from tsformer.train import REPO_ROOT

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _run(args, cwd):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "tsformer.train", *args], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-4000:]


def _docs(path):
    lines = []
    for i in range(50):  # an odd split size per rank on purpose
        lab = "pos" if i % 2 else "neg"
        word = "good great fine" if lab == "pos" else "bad awful poor"
        lines.append(json.dumps({"body": f"{word} film number {i} " * (3 + i % 5), "y": lab}))
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("task", ["textcls", "charlm"])
def test_ddp_eval_equals_single_process(tmp_path, task):
    if task == "textcls":
        data = tmp_path / "docs.jsonl"
        _docs(data)
        args = ["task=textcls", "model=longformer", f"data.path={data}", "data.text_field=body", "data.label_field=y",
                "data.max_tokens=64", "data.vocab_size=60", "data.batch_size=4", "data.eval_batch_size=3", *TINY_MODEL]
        keys = ["test/accuracy", "test/f1"]
    else:
        data = tmp_path / "t.txt"
        data.write_text("to be or not to be, that is the question.\n" * 60)
        args = ["task=charlm", f"data.path={data}", "data.context=64", "data.train_samples=64", "data.batch_size=4",
                "data.eval_batch_size=3", "model.d_model=32", "model.n_heads=4", "model.d_ff=64",
                "model.window=[8,8,16]"]
        keys = ["test/bpc"]
    # Learning rate 0: both runs test the same (seeded) initial weights.
    common = args + ["trainer.max_steps=2", "trainer.val_check_interval=1", "module.lr=0.0", *QUIET]
    _run(common + [f"run_dir={tmp_path / 'single'}"], tmp_path)
    _run(common + DDP + [f"run_dir={tmp_path / 'ddp'}"], tmp_path)
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for k in keys:
        assert ddp[k] == pytest.approx(single[k], rel=1e-6), (k, single, ddp)


@pytest.mark.slow
def test_ddp_speech_eval_equals_single_process(tmp_path):
    from tests.data.speech_fixtures import make_librispeech
    from tests.tasks.test_asr_e2e import TINY

    root = make_librispeech(tmp_path / "LibriSpeech")
    tiny = [a for a in TINY if not a.startswith(("trainer.max_steps", "trainer.val_check_interval"))]
    # No training step (batch-norm statistics would follow each process's batches).
    common = ["task=librispeech", "model=conformer_lsra", f"data.root={root}", "data.tokenizer.type=char",
              "data.eval_batch_size=1", "trainer.max_steps=0", *tiny]
    _run(common + [f"run_dir={tmp_path / 'single'}"], tmp_path)
    _run(common + DDP + [f"run_dir={tmp_path / 'ddp'}"], tmp_path)
    single = json.loads((tmp_path / "single" / "metrics.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    for k in ("test/wer", "test/cer", "dev/wer", "dev/cer"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-9), (k, single, ddp)
    # An untrained model: the check is that DDP runs and reduces, not the accuracy.
    assert (tmp_path / "ddp" / "checkpoints" / "best.ckpt").exists()


@pytest.mark.slow
@pytest.mark.parametrize("task", ["textcls", "charlm"])
def test_kill_and_resume_text_tasks(tmp_path, task):
    """SIGKILL mid-run, resume=true: the finished run's metrics equal an uninterrupted run's."""
    import signal
    import time

    from tsformer.callbacks import find_resume_checkpoint

    if task == "textcls":
        data = tmp_path / "docs.jsonl"
        _docs(data)
        args = ["task=textcls", "model=longformer", f"data.path={data}", "data.text_field=body", "data.label_field=y",
                "data.max_tokens=64", "data.vocab_size=60", "data.batch_size=4", *TINY_MODEL]
        keys = ["test/accuracy", "test/f1", "test/loss"]
    else:
        data = tmp_path / "t.txt"
        data.write_text("to be or not to be, that is the question.\n" * 60)
        args = ["task=charlm", f"data.path={data}", "data.context=64", "data.train_samples=64", "data.batch_size=4",
                "model.d_model=32", "model.n_heads=4", "model.d_ff=64", "model.window=[8,8,16]"]
        keys = ["test/bpc"]
    args += ["trainer.max_steps=150", "trainer.val_check_interval=10", "checkpoint.every_n_steps=3",
             "model.dropout=0.1", *QUIET]
    _run(args + [f"run_dir={tmp_path / 'a'}"], tmp_path)
    ref = json.loads((tmp_path / "a" / "metrics.json").read_text())

    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    run_b = tmp_path / "b"
    p = subprocess.Popen([sys.executable, "-m", "tsformer.train", *args, f"run_dir={run_b}"], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and not list((run_b / "checkpoints").glob("step=*.ckpt")):
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run_b / "metrics.json").exists(), "the run finished before it could be killed"
    assert 0 < find_resume_checkpoint(run_b)[1]["global_step"] < 150
    _run(args + [f"run_dir={run_b}", "resume=true"], tmp_path)
    got = json.loads((run_b / "metrics.json").read_text())
    for k in keys:
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-7), (k, ref, got)
