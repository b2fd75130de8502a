"""CMU AN4 (alphanumeric census) corpus as Sphinx MFCC cepstra (Acero 1990).

Layout: ``<root>/etc/an4_{train,test}.fileids`` (``an4_clstk/fash/an251-fash-b``),
``<root>/etc/an4_{train,test}.transcription`` (``YES (an251-fash-b)``) and
``<root>/feat/<fileid>.mfc``: Sphinx cepstra files (:mod:`tsformer.data.speech.sphinx`), 13
cepstral coefficients per frame, 100 frames per second.
"""

from __future__ import annotations

import re
from pathlib import Path

from tsformer.data.encoding import read_text
from tsformer.data.errors import DataError
from tsformer.data.speech.datamodule import SpeechDataModule, Utterance

_TRANS = re.compile(r"^(.*)\((\S+)\)\s*$")


def read_an4_split(root: str | Path, split: str) -> list[Utterance]:
    """Utterances of ``split`` (``train`` or ``test``), transcripts checked against fileids."""
    root = Path(root)
    ids_path, tr_path = root / "etc" / f"an4_{split}.fileids", root / "etc" / f"an4_{split}.transcription"
    for p in (ids_path, tr_path):
        if not p.is_file():
            raise DataError(f"{p}: AN4 list not found")
    fileids = [line.strip() for line in read_text(ids_path).splitlines() if line.strip()]
    if not fileids:
        raise DataError(f"{ids_path}: no file ids")
    texts = {}
    for n, line in enumerate(read_text(tr_path).splitlines(), 1):
        if not line.strip():
            continue
        m = _TRANS.match(line.strip())
        if not m:
            raise DataError(f"{tr_path}, line {n}: expected 'TEXT (utterance-id)', got {line.strip()!r}")
        text = " ".join(w for w in m.group(1).split() if w not in ("<s>", "</s>"))
        texts[m.group(2)] = text
    utts = []
    for fid in fileids:
        uid = Path(fid).name
        if uid not in texts:
            raise DataError(f"{tr_path}: no transcript for {uid!r} (listed in {ids_path})")
        path = root / "feat" / f"{fid}.mfc"
        if not path.is_file():
            raise DataError(f"{path}: feature file listed in {ids_path} not found")
        utts.append(Utterance(id=uid, path=str(path), text=texts[uid]))
    return utts


class AN4DataModule(SpeechDataModule):
    """AN4 from precomputed cepstra: ``an4_train`` minus held-out speakers for dev, ``an4_test``.

    Args:
        root: the ``an4`` folder (holding ``etc/`` and ``feat/``).
        dev_speakers: every ``dev_speakers``-th training speaker (sorted) is held out for
            validation (0: no dev split).
        **kwargs: :class:`SpeechDataModule` settings (``features`` defaults to sphinx, 13).
    """

    def __init__(self, root: str, dev_speakers: int = 10, **kwargs):
        kwargs.setdefault("features", {"type": "sphinx", "dim": 13})
        super().__init__(**kwargs)
        self.root, self.dev_speakers = root, dev_speakers
        self._train_all: list[Utterance] | None = None

    def _speaker(self, u: Utterance) -> str:
        return Path(u.path).parent.name

    def read_split(self, part: str) -> list[Utterance]:
        if not (Path(self.root) / "etc" / "an4_train.fileids").is_file():
            raise DataError(
                f"{self.root}: AN4 corpus not found (no etc/an4_train.fileids there). Put CMU's AN4 as Sphinx "
                "cepstra (the 'an4' folder holding etc/an4_{train,test}.{fileids,transcription} and "
                "feat/an4_clstk/..., feat/an4test_clstk/...; http://www.speech.cs.cmu.edu/databases/an4/) there, "
                "pass data.root=/path/to/an4, or set TSFORMER_DATA to a folder holding an4_cepstra/an4"
            )
        if part == "test":
            return read_an4_split(self.root, "test")
        if self._train_all is None:
            self._train_all = read_an4_split(self.root, "train")
        spk = sorted({self._speaker(u) for u in self._train_all})
        held = set(spk[:: self.dev_speakers]) if self.dev_speakers else set()
        if part == "dev":
            return [u for u in self._train_all if self._speaker(u) in held]
        return [u for u in self._train_all if self._speaker(u) not in held]
