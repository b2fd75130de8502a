"""sktime interface: :class:`LogSparseForecaster`, a global probabilistic forecaster.

One network is fitted on all series of a panel or hierarchy (or on one series) and
predicts every series; quantiles come from sample paths. It can also be built from an
exported ``model.tsf`` (``LogSparseForecaster(model_path="model.tsf")``), in which case
``fit`` only records the data to forecast from.

Model: the convolutional LogSparse Transformer of Li et al. (NeurIPS 2019),
:class:`tsformer.nn.conv_transformer.ConvTransformerForecaster`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sktime.forecasting.base import BaseForecaster

_ORIGIN = pd.Timestamp("2000-01-01")


def _to_datetime(index: pd.Index) -> pd.DatetimeIndex:
    """Calendar timestamps for any sktime time index (integers become days from 2000-01-01)."""
    if isinstance(index, pd.DatetimeIndex):
        return index.tz_localize(None) if index.tz is not None else index
    if isinstance(index, pd.PeriodIndex):
        return index.to_timestamp()
    return pd.DatetimeIndex(_ORIGIN + pd.to_timedelta(np.asarray(index, dtype=np.int64), unit="D"))


def _to_long(y: pd.DataFrame) -> tuple[pd.DataFrame, list, str]:
    """``(long frame series,time,value, instance keys in order, variable name)``."""
    var = y.columns[0]
    if isinstance(y.index, pd.MultiIndex):
        inst = y.index.droplevel(-1)
        keys = list(dict.fromkeys(inst))
        ids = [repr(k) for k in inst]
        t = _to_datetime(y.index.get_level_values(-1))
    else:
        keys, ids, t = [None], ["0"] * len(y), _to_datetime(y.index)
    frame = pd.DataFrame({"series": ids, "time": t, "value": y.iloc[:, 0].to_numpy(np.float64)})
    return frame, keys, var


class LogSparseForecaster(BaseForecaster):
    """Global probabilistic forecaster: convolutional LogSparse Transformer (Li et al. 2019).

    Parameters
    ----------
    context_length : int, conditioning range (shortened to fit short series).
    horizon : int, prediction range of the training windows (any ``fh`` can be predicted;
        steps beyond it are sampled autoregressively too).
    d_model, n_heads, n_layers, d_ff, conv_kernel : network sizes.
    max_steps : int, optimiser steps in ``fit``.
    batch_size : int, training windows per step.
    lr : float, AdamW learning rate.
    num_samples : int, sample paths per forecast.
    random_state : int, seed for training and sampling.
    model_path : str or None, an exported ``.tsf`` file; when set, ``fit`` does not train.

    Examples
    --------
    >>> from sktime.datasets import load_airline
    >>> from tsformer.sktime import LogSparseForecaster
    >>> y = load_airline()
    >>> f = LogSparseForecaster(context_length=24, horizon=6, max_steps=5, num_samples=20)
    >>> f.fit(y)
    LogSparseForecaster(...)
    >>> f.predict_quantiles(fh=[1, 2, 3], alpha=[0.1, 0.9]).shape
    (3, 2)
    """

    _tags = {
        "authors": ["tsformer"],
        "python_dependencies": ["torch"],
        "y_inner_mtype": ["pd.DataFrame", "pd-multiindex", "pd_multiindex_hier"],
        "X_inner_mtype": ["pd.DataFrame", "pd-multiindex", "pd_multiindex_hier"],
        "capability:exogenous": False,
        "capability:multivariate": False,
        "capability:insample": False,
        "capability:pred_int": True,
        "capability:pred_int:insample": False,
        "capability:missing_values": False,
        "capability:random_state": True,
        "requires-fh-in-fit": False,
        "X-y-must-have-same-index": True,
        "fit_is_empty": False,
    }

    def __init__(
        self,
        context_length: int = 48,
        horizon: int = 12,
        d_model: int = 32,
        n_heads: int = 2,
        n_layers: int = 2,
        d_ff: int = 64,
        conv_kernel: int = 3,
        max_steps: int = 200,
        batch_size: int = 32,
        lr: float = 3e-3,
        num_samples: int = 100,
        random_state: int = 0,
        model_path: str | None = None,
    ):
        self.context_length = context_length
        self.horizon = horizon
        self.d_model = d_model
        self.n_heads = n_heads
        self.n_layers = n_layers
        self.d_ff = d_ff
        self.conv_kernel = conv_kernel
        self.max_steps = max_steps
        self.batch_size = batch_size
        self.lr = lr
        self.num_samples = num_samples
        self.random_state = random_state
        self.model_path = model_path
        super().__init__()

    @classmethod
    def from_tsf(cls, path: str, **kwargs) -> LogSparseForecaster:
        """A forecaster that uses the exported model at ``path`` (``fit`` does not train)."""
        return cls(model_path=str(path), **kwargs)

    # -- fit -----------------------------------------------------------------------
    def _fit(self, y, X=None, fh=None):
        import torch

        from tsformer.data.forecasting.csv_datamodule import CSVForecastingDataModule
        from tsformer.nn.conv_transformer import ConvTransformerForecaster
        from tsformer.tasks.forecasting import GaussianHead

        frame, _, _ = _to_long(y)
        if self.model_path is not None:
            from tsformer.export import load_tsf

            self.net_, self.info_ = load_tsf(self.model_path)
            d = self.info_["config"]["data"]
            if d.get("known_covariates") or d.get("past_covariates") or d.get("static_categoricals"):
                raise ValueError(f"{self.model_path}: models trained with covariates cannot be used through sktime")
            self.context_length_ = int(self.info_["data_state"]["context_length"])
            return self
        lengths = frame.groupby("series", sort=False).size()
        H = int(self.horizon)
        if fh is not None:
            H = max(H, int(np.max(fh.to_relative(self.cutoff).to_numpy())))
        H = max(1, min(H, int(lengths.min()) // 2))
        C = max(1, min(int(self.context_length), int(lengths.min()) - H))
        self.context_length_, self.horizon_ = C, H
        dm = CSVForecastingDataModule(
            frame=frame, time_col="time", target="value", id_col="series", context_length=C, horizon=H,
            test_windows=0, val_windows=0, batch_size=self.batch_size,
        )
        dm.setup("fit")
        torch.manual_seed(self.random_state)
        net = ConvTransformerForecaster(
            **dm.model_kwargs(), d_model=self.d_model, n_heads=self.n_heads, n_layers=self.n_layers, d_ff=self.d_ff,
            conv_kernel=self.conv_kernel, embedding_dim=8, dropout=0.0,
        )
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr)
        gen = torch.Generator().manual_seed(self.random_state)
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dm.train_dataloader().dataset, range(len(dm.train_items))),
            batch_size=self.batch_size, shuffle=True, generator=gen,
        )
        step = 0
        net.train()
        while step < self.max_steps:
            for b in loader:
                mu, sigma = net(b["inputs"], b["covariates"], b["series"])
                loss = GaussianHead.nll(mu, sigma, b["target"], b["observed"])
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
                opt.step()
                step += 1
                if step >= self.max_steps:
                    break
        self.net_ = net.eval()
        self.info_ = {
            "config": {"data": {"time_col": "time", "target": "value", "id_col": "series", "context_length": C,
                                "horizon": H, "missing": "mask"}},
            "data_state": dm.state_dict(),
        }
        return self

    # -- predict ---------------------------------------------------------------------
    def _samples(self, fh, y=None):
        """``(series keys, variable name, (N, S, len(fh)) samples, fh absolute index)``."""
        from tsformer.forecast import make_datamodule, predict_frame

        y = self._y if y is None else y
        frame, keys, var = _to_long(y)
        rel = fh.to_relative(self.cutoff).to_numpy().astype(int)
        h = int(rel.max())
        info = {
            "config": {"data": {**self.info_["config"]["data"], "time_col": "time", "target": "value",
                                "id_col": "series", "known_covariates": [], "past_covariates": [],
                                "static_categoricals": []}},
            "data_state": self.info_["data_state"],
        }
        dm = make_datamodule(info, frame=frame, horizon=h, context_length=self.context_length_,
                             unknown_series="mean", freq=pd.infer_freq(frame["time"].drop_duplicates().iloc[:1000]))
        _, samples = predict_frame(self.net_, dm, [], int(self.num_samples), include_mean=False,
                                   seed=self.random_state, keep_samples=True)
        return keys, var, samples[:, :, rel - 1], fh.to_absolute(self.cutoff)._values

    def _index(self, keys, abs_idx):
        if keys == [None]:
            return abs_idx
        tuples = [(*(k if isinstance(k, tuple) else (k,)), t) for k in keys for t in abs_idx]
        return pd.MultiIndex.from_tuples(tuples, names=list(self._y.index.names))

    def _predict(self, fh, X=None):
        keys, var, samples, abs_idx = self._samples(fh)
        vals = samples.mean(1).reshape(-1)
        return pd.DataFrame({var: vals}, index=self._index(keys, abs_idx))

    def _predict_quantiles(self, fh, X, alpha):
        keys, var, samples, abs_idx = self._samples(fh)
        q = np.quantile(samples, alpha, axis=1)  # (Q, N, H)
        data = q.transpose(1, 2, 0).reshape(-1, len(alpha))
        cols = pd.MultiIndex.from_product([[var], alpha])
        return pd.DataFrame(data, index=self._index(keys, abs_idx), columns=cols)

    @classmethod
    def get_test_params(cls, parameter_set="default"):
        """Tiny settings for sktime's conformance tests."""
        small = {"d_model": 8, "n_heads": 2, "n_layers": 1, "d_ff": 16, "max_steps": 2, "batch_size": 8,
                 "num_samples": 8}
        return [
            {**small, "context_length": 8, "horizon": 3},
            {**small, "context_length": 4, "horizon": 2, "conv_kernel": 1, "random_state": 1},
        ]
