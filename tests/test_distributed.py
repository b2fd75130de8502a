"""Many series: any split of the input into whole series (pandas partitions, a local Spark,
devices=N processes) gives exactly the forecasts of one tsformer-forecast run."""

import os
import shutil
import sys

import numpy as np
import pandas as pd
import pytest

from tests.data.test_user_csv import long_frame, write
from tsformer.data.errors import DataError
from tsformer.distributed import (
    empty_forecast,
    forecast_batches,
    forecast_frame,
    load_model,
    output_columns,
    output_schema,
)
from tsformer.export import export
from tsformer.forecast import forecast, main
from tsformer.train import REPO_ROOT, compose_config, train

SMALL = ["data.context_length=24", "data.horizon=6", "data.batch_size=16", "model.d_model=16", "model.n_heads=2",
         "model.n_layers=1", "model.d_ff=32", "module.num_samples=16", "trainer.max_steps=3",
         "trainer.val_check_interval=3", "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
         "print_metrics=false"]
N_SERIES = 240
BATCH = 32  # series per batch: several batches per run, and partitions smaller than a batch


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    data = write(tmp, long_frame(n_series=3))
    run = tmp / "run"
    train(compose_config(["task=csv", f"data.path={data}", "data.time_col=time", "data.id_col=series",
                          "data.target=value", "data.static_categoricals=[region]", f"run_dir={run}", *SMALL]))
    return export(run, tmp / "model.tsf")


@pytest.fixture(scope="module")
def history():
    """N_SERIES ragged series (different starts, ends and gaps; most unseen in training), rows shuffled."""
    rng = np.random.default_rng(1)
    parts = []
    for i in range(N_SERIES):
        s = long_frame(n_series=1, steps=100, seed=i).assign(series=f"U{i:03d}", region=["north", "south"][i % 2])
        s["value"] += i % 7
        lo, hi = rng.integers(0, 40), rng.integers(0, 30)
        s = s.iloc[lo : len(s) - hi].copy()
        s.loc[s.index[rng.integers(0, 10)], "value"] = np.nan
        parts.append(s)
    parts[0] = parts[0].assign(series="S1")  # a trained series too
    df = pd.concat(parts, ignore_index=True)[["series", "time", "value", "region"]]
    return df.sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def whole(model, history, tmp_path_factory):
    """The command's output for the whole input (CSV in, CSV out)."""
    tmp = tmp_path_factory.mktemp("whole")
    data = write(tmp, history, "history.csv")
    assert main([f"model={model}", f"input={data}", f"output={tmp / 'fc.csv'}", "seed=7", f"batch_size={BATCH}",
                 "progress=false"]) == 0
    return pd.read_csv(tmp / "fc.csv", dtype={"series": str}, keep_default_na=False)


def as_written(fc: pd.DataFrame) -> pd.DataFrame:
    """``fc`` as the command writes and reads it back (the CSV text round trip)."""
    from io import StringIO

    return pd.read_csv(StringIO(fc.to_csv(index=False, date_format="%Y-%m-%d %H:%M:%S")), dtype={"series": str},
                       keep_default_na=False)


def test_random_partitions_give_the_commands_output(model, history, whole):
    """Whole series split at random into 7 partitions (shuffled rows, different spans):
    forecast each, concatenate, sort by series: the command's output, to the bit."""
    assert whole["series"].nunique() == N_SERIES and len(whole) == N_SERIES * 6
    rng = np.random.default_rng(3)
    names = history["series"].unique()
    part_of = dict(zip(names, rng.integers(0, 7, len(names))))
    keys = history["series"].map(part_of)
    parts = [forecast_frame(g, model, seed=7, batch_size=BATCH) for _, g in history.groupby(keys)]
    got = pd.concat(parts, ignore_index=True).sort_values("series", kind="stable", ignore_index=True)
    pd.testing.assert_frame_equal(as_written(got), whole)
    # a series alone, and the whole frame in memory: the same rows again
    one = forecast_frame(history[history.series == "U017"], model, seed=7, batch_size=BATCH)
    pd.testing.assert_frame_equal(as_written(one), whole[whole.series == "U017"].reset_index(drop=True))
    assert list(got.columns) == output_columns() and all(t == np.float32 for t in got.dtypes.iloc[2:])
    # any batch size, a batch of one included: the same forecasts
    few = history[history.series.isin(["S1", "U003", "U100"])]
    ones = forecast_frame(few, model, seed=7, batch_size=1)
    pd.testing.assert_frame_equal(as_written(ones), whole[whole.series.isin(few.series)].reset_index(drop=True))
    # another seed, another forecast
    other = forecast_frame(history[history.series == "U017"], model, seed=8, batch_size=BATCH)
    assert not np.allclose(other["0.5"], one["0.5"])


def test_forecast_batches_streams_grouped_rows(model, history, whole):
    """mapInPandas-style: rows grouped by series, cut into arrow-like batches that split series."""
    rows = history.sort_values(["series", "time"], ignore_index=True)
    cuts = [rows.iloc[i : i + 997] for i in range(0, len(rows), 997)]
    got = pd.concat(list(forecast_batches(iter(cuts), model, seed=7, batch_size=BATCH)), ignore_index=True)
    pd.testing.assert_frame_equal(as_written(got), whole)
    shuffled = [history.iloc[i : i + 997] for i in range(0, len(history), 997)]
    with pytest.raises(DataError, match="rows are not together in this partition; repartition by 'series'"):
        list(forecast_batches(iter(shuffled), model, seed=7))


def test_schema_empty_input_and_model_cache(model, history):
    assert output_schema([0.1, 0.9]) == "series string, time timestamp, `mean` float, `0.1` float, `0.9` float"
    empty = forecast_frame(history.iloc[:0], model)
    pd.testing.assert_frame_equal(empty, empty_forecast())
    assert load_model(model)[0] is load_model(str(model))[0]  # loaded once per process


@pytest.mark.slow
def test_devices_2_gives_the_one_process_output(model, history, whole, tmp_path):
    """``devices=2``: two CPU processes through Lightning's predict loop (ddp_spawn, gloo)."""
    data = write(tmp_path, history, "history.csv")
    fc = forecast(model=str(model), input=str(data), output=str(tmp_path / "fc2.csv"), seed=7, batch_size=BATCH,
                  devices=2, progress=False)
    assert len(fc) == len(whole)
    two = pd.read_csv(tmp_path / "fc2.csv", dtype={"series": str}, keep_default_na=False)
    pd.testing.assert_frame_equal(two, whole)


def _spark_missing() -> str | None:
    try:
        import pyspark  # noqa: F401
    except ImportError:
        return "pyspark is not installed (pip install -e '.[spark]')"
    if not (shutil.which("java") or os.environ.get("JAVA_HOME")):
        return "no Java runtime for Spark (java not on PATH and JAVA_HOME unset)"
    return None


@pytest.mark.slow
@pytest.mark.skipif(_spark_missing() is not None, reason=str(_spark_missing()))
def test_local_spark_gives_the_commands_output(model, history, whole):
    """A real local Spark (local[2]): the series repartitioned over 6 tasks, forecast with
    groupBy(bucket).applyInPandas and with mapInPandas; both equal the command's output."""
    from pyspark.sql import SparkSession
    from pyspark.sql import functions as F

    env = {"PYSPARK_PYTHON": sys.executable, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    os.environ.update(env)
    spark = (SparkSession.builder.master("local[2]").appName("tsformer-test")
             .config("spark.sql.session.timeZone", "UTC").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "6").config("spark.executorEnv.PYTHONPATH", env["PYTHONPATH"])
             .config("spark.sql.execution.arrow.maxRecordsPerBatch", "1000").getOrCreate())
    try:
        sdf = spark.createDataFrame(history).repartition(6, "series")
        assert sdf.rdd.getNumPartitions() == 6
        path = str(model)
        by_group = (sdf.withColumn("bucket", F.abs(F.hash("series")) % 5)
                    .groupBy("bucket")
                    .applyInPandas(lambda df: forecast_frame(df.drop(columns="bucket"), path, seed=7, batch_size=BATCH),
                                   schema=output_schema())
                    .toPandas())
        streamed = (sdf.sortWithinPartitions("series", "time")
                    .mapInPandas(lambda it: forecast_batches(it, path, seed=7, batch_size=BATCH), schema=output_schema())
                    .toPandas())
    finally:
        spark.stop()
    for got in (by_group, streamed):
        got = got.sort_values("series", kind="stable", ignore_index=True)
        pd.testing.assert_frame_equal(as_written(got), whole)


def test_spark_is_a_test_dependency():
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert '"pyspark' in text.split("[project.optional-dependencies]")[1].split("[project.scripts]")[0]


def test_devices_argument_is_listed():
    from tsformer.cli import help_text
    from tsformer.forecast import DEFAULTS
    from tsformer.forecast import __doc__ as usage

    assert "devices" in help_text(usage, DEFAULTS)
