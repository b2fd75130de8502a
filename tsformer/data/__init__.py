"""Data: readers of the real formats, windowing and DataModules, by task family. Knows no model.

- ``forecasting/``: ``readers`` (long CSV, UCI electricity, LSTNet matrices), ``user_csv``
  (your own CSV, wide or long, with covariates), ``longhorizon`` (ETT and the Informer
  splits), ``datamodule`` (windows and :class:`ForecastingDataModule`), ``csv_datamodule``.
- ``speech/``: ``librispeech``, ``an4`` (corpus layouts and their DataModules), ``sphinx``
  (``.mfc`` cepstra files), ``audio`` (audio files, log-mel features), ``datamodule`` (the
  shared :class:`SpeechDataModule`).
- ``text/``: ``documents`` (CSV, JSONL, folder trees), ``hyperpartisan`` (SemEval-2019
  XML), ``imdb``, ``readers`` (any of them by format), ``splits``, ``books`` (folders of
  Project Gutenberg books, split by book), ``classification`` and ``charlm`` (the DataModules).
- shared: ``errors`` (:class:`DataError`), ``samplers`` (rank sharding, resumable order,
  length buckets), ``tokenizers`` (CTC, document SentencePiece, characters).
"""
