"""AN4 Sphinx-cepstra reader on a fixture written in the exact binary format."""

import numpy as np
import pytest

from tests.data.speech_fixtures import make_an4
from tsformer.data.errors import DataError
from tsformer.data.speech.an4 import AN4DataModule, read_an4_split
from tsformer.data.speech.sphinx import read_sphinx_cepstra, write_sphinx_cepstra


def test_sphinx_format_is_big_endian_count_then_floats(tmp_path):
    x = np.arange(26, dtype=np.float32).reshape(2, 13) / 7
    p = tmp_path / "a.mfc"
    write_sphinx_cepstra(p, x)
    raw = p.read_bytes()
    assert raw[:4] == (26).to_bytes(4, "big") and len(raw) == 4 + 26 * 4
    assert raw[4:8] == b"\x00\x00\x00\x00"
    assert raw[8:12] == np.array([1 / 7], dtype=">f4").tobytes()
    np.testing.assert_array_equal(read_sphinx_cepstra(p), x)


def test_malformed_cepstra_name_file(tmp_path):
    p = tmp_path / "bad.mfc"
    p.write_bytes((100).to_bytes(4, "big") + b"\x00" * 40)
    with pytest.raises(DataError, match="bad.mfc"):
        read_sphinx_cepstra(p)


def test_read_split_and_datamodule(tmp_path):
    root = make_an4(tmp_path / "an4")
    utts = read_an4_split(root, "train")
    assert [u.id for u in utts][:2] == ["an100-fash-b", "an101-fbbh-b"]
    assert utts[0].text == "YES ONE"
    dm = AN4DataModule(root=str(root), dev_speakers=3, batch_size=2, tokenizer={"type": "char"})
    dm.setup("fit")
    assert {u.path.split("/")[-2] for u in dm.utts["dev"]} == {"fash"}
    assert not {u.id for u in dm.utts["dev"]} & {u.id for u in dm.utts["train"]}
    batch = next(iter(dm.train_dataloader()))
    assert batch["feats"].shape[2] == 13 and dm.model_kwargs()["input_dim"] == 13


def test_missing_transcript_and_corpus_errors(tmp_path):
    root = make_an4(tmp_path / "an4")
    tr = root / "etc" / "an4_test.transcription"
    tr.write_text("\n".join(tr.read_text().splitlines()[1:]) + "\n")
    with pytest.raises(DataError, match="an4_test.transcription: no transcript for 'an100"):
        read_an4_split(root, "test")
    with pytest.raises(DataError, match="AN4 corpus not found.*data.root"):
        AN4DataModule(root=str(tmp_path / "missing")).setup("fit")
