import gzip

import numpy as np
import pandas as pd
import pytest

from tsformer.data.errors import DataError
from tsformer.data.forecasting.readers import detect_format, read_series


def test_long_csv_roundtrip(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text(
        "group,time,kW\n"
        "A,2014-01-01 00:00:00,1.5\nA,2014-01-01 01:00:00,\nA,2014-01-01 02:00:00,3\n"
        "B,2014-01-01 00:00:00,10\nB,2014-01-01 01:00:00,11\nB,2014-01-01 02:00:00,12\n"
    )
    t = read_series(path)
    assert detect_format(path) == "long"
    assert t.names == ["A", "B"]
    assert t.freq == "h"
    assert np.isnan(t.values[1, 0])  # empty cell stays missing
    np.testing.assert_allclose(t.values[:, 1], [10, 11, 12])


def test_long_csv_gap_becomes_missing(tmp_path):
    path = tmp_path / "s.csv"
    lines = ["series,time,value"] + [f"A,2014-01-01 {h:02d}:00:00,{h}" for h in range(6) if h != 3]
    path.write_text("\n".join(lines) + "\n")
    t = read_series(path, freq="1h")
    assert len(t.index) == 6 and np.isnan(t.values[3, 0])


def test_shipped_electricity_sample():
    from tsformer.train import REPO_ROOT

    t = read_series(REPO_ROOT / "data/electricity/df_electricity_sample.csv.gz")
    assert t.names == ["MT_001", "MT_003", "MT_358"]
    assert t.values.shape == (26305, 3)
    assert t.index[0] == pd.Timestamp("2012-01-01") and t.index[-1] == pd.Timestamp("2015-01-01")
    assert np.isnan(t.values).sum() == 9  # the DST hours left blank upstream


def test_uci_ld2011_format(tmp_path):
    # Exactly the UCI layout: quoted header with empty first cell, ';' separator, decimal comma.
    path = tmp_path / "LD2011_2014.txt"
    stamps = pd.date_range("2011-01-01 00:15:00", periods=8, freq="15min")
    rows = ['"";"MT_001";"MT_002"']
    for i, s in enumerate(stamps):
        rows.append(f'"{s:%Y-%m-%d %H:%M:%S}";{i},5;{2 * i}')
    path.write_text("\n".join(rows) + "\n")
    assert detect_format(path) == "uci"
    t = read_series(path)
    assert t.names == ["MT_001", "MT_002"]
    # 00:15..01:00 -> hour 00:00, 01:15..02:00 -> hour 01:00
    assert list(t.index) == [pd.Timestamp("2011-01-01 00:00"), pd.Timestamp("2011-01-01 01:00")]
    np.testing.assert_allclose(t.values[:, 0], [np.mean([0.5, 1.5, 2.5, 3.5]), np.mean([4.5, 5.5, 6.5, 7.5])])
    t_sum = read_series(path, aggregate="sum")
    np.testing.assert_allclose(t_sum.values[:, 1], [0 + 2 + 4 + 6, 8 + 10 + 12 + 14])


def test_uci_bad_value_names_row(tmp_path):
    path = tmp_path / "LD2011_2014.txt"
    path.write_text('"";"MT_001"\n"2011-01-01 00:15:00";1,0\n"2011-01-01 00:30:00";abc\n')
    with pytest.raises(DataError, match=r"LD2011_2014.txt: row 3, column 'MT_001'"):
        read_series(path)


@pytest.mark.parametrize("gz", [False, True])
def test_lstnet_matrix(tmp_path, gz):
    data = "1.0,2.0,3.0\n4.0,5.0,6.0\n7.0,8.0,9.0\n"
    path = tmp_path / ("electricity.txt.gz" if gz else "electricity.txt")
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(data)
    else:
        path.write_text(data)
    assert detect_format(path) == "lstnet"
    t = read_series(path)
    assert t.values.shape == (3, 3)
    assert t.index[0] == pd.Timestamp("2012-01-01") and t.freq == "h"
    t2 = read_series(path, start="2020-01-01", freq="10min")
    assert t2.index[1] == pd.Timestamp("2020-01-01 00:10")


def test_missing_file_says_where(tmp_path):
    with pytest.raises(DataError, match="file not found. Put the electricity file there"):
        read_series(tmp_path / "nope.txt", dataset="electricity")


def test_long_csv_errors_name_row(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("series,time,value\nA,2014-01-01 00:00,1\nA,2014-01-01 01:00,x\n")
    with pytest.raises(DataError, match=r"bad.csv: row 3: non-numeric 'value'"):
        read_series(path)
    path.write_text("series,time,value\nA,2014-01-01 00:00,1\nA,2014-01-01 00:00,2\n")
    with pytest.raises(DataError, match=r"row 3: duplicate time"):
        read_series(path)
    path.write_text("")
    with pytest.raises(DataError, match="empty"):
        read_series(path)
