"""File source: Parquet/CSV round trips, column-name mapping, sector join, filters, and the real sample."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ensemble.data import schema
from ensemble.data.files import load_file, map_columns, save_file
from ensemble.data.schema import DataValidationError

FILES_LOGGER = "ensemble.data.files"


def contract_frame() -> pd.DataFrame:
    """A valid, coerced frame with every optional column: 3 tickers x 6 days, awkward floats."""
    rng = np.random.default_rng(3)
    dates = pd.bdate_range("2022-12-28", periods=6)
    rows = []
    for i, t in enumerate(("AAA", "BBB", "NA")):
        for j, d in enumerate(dates):
            c = 20.0 * (i + 1) + j / 3.0 + rng.random() / 7.0
            rows.append(
                {
                    "date": d,
                    "ticker": t,
                    "open": c * 0.995,
                    "high": c * 1.02,
                    "low": c * 0.98,
                    "close": c,
                    "volume": float(1234567 + 1000 * j),
                    "adj_close": c * 0.9,
                    "pe": -12.5 if t == "BBB" else 15.0 + j,
                    "pb": np.nan if j == 2 else 1.5,
                    "market_cap": 3.3e10 + j,
                    "dividend_yield": 0.021,
                    "sector": None if t == "NA" else ("Energy" if t == "AAA" else "Health Care"),
                    "sentiment": 0.1 * j - 0.2,
                }
            )
    return schema.coerce(pd.DataFrame(rows))


@pytest.fixture
def frame() -> pd.DataFrame:
    return contract_frame()


def sectors_csv(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sectors.csv"
    p.write_text(text)
    return p


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", ["prices.parquet", "prices.pq", "prices.csv", "prices.csv.gz"])
def test_round_trip_keeps_values_and_dtypes(tmp_path: Path, frame: pd.DataFrame, name: str) -> None:
    path = save_file(frame, tmp_path / "sub" / name)
    assert path.is_file()
    got, report = load_file(path)
    assert report is None
    pd.testing.assert_frame_equal(got, frame)
    assert got["ticker"].tolist()[-1] == "NA"  # a ticker spelled like a null marker stays a ticker
    assert got["sector"].isna().sum() == 6 and got["pb"].isna().sum() == 3


def test_parquet_is_zstd(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = save_file(frame, tmp_path / "p.parquet")
    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"


def test_required_columns_only_round_trip(tmp_path: Path, frame: pd.DataFrame) -> None:
    core = frame[list(schema.REQUIRED_COLUMNS)]
    for name in ("core.parquet", "core.csv"):
        got, _ = load_file(save_file(core, tmp_path / name))
        pd.testing.assert_frame_equal(got, core)


def test_save_validates_first(tmp_path: Path, frame: pd.DataFrame) -> None:
    bad = frame.copy()
    bad.loc[4, "volume"] = -1.0
    target = tmp_path / "bad.parquet"
    with pytest.raises(DataValidationError) as ei:
        save_file(bad, target)
    assert (ei.value.rule, ei.value.ticker, ei.value.dates) == (
        "volume_nonnegative",
        "AAA",
        [frame["date"][4]],
    )
    assert not target.exists()


def test_save_writes_only_contract_columns(
    tmp_path: Path, frame: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger=FILES_LOGGER):
        path = save_file(frame.assign(note="x"), tmp_path / "p.parquet")
    assert "note" not in pq.read_schema(path).names
    assert "not writing 1 columns outside the data contract: note" in caplog.text


def test_unsupported_suffix_and_missing_file(tmp_path: Path, frame: pd.DataFrame) -> None:
    odd = tmp_path / "prices.xlsx"
    odd.write_text("x")
    with pytest.raises(ValueError, match=r"unsupported data file type .*prices\.xlsx"):
        load_file(odd)
    with pytest.raises(ValueError, match=r"prices\.json"):
        save_file(frame, tmp_path / "prices.json")
    with pytest.raises(FileNotFoundError, match=r"data file not found: .*nope\.parquet"):
        load_file(tmp_path / "nope.parquet")
    with pytest.raises(FileNotFoundError, match=r"sector file not found: .*nope\.csv"):
        load_file(save_file(frame, tmp_path / "p.parquet"), sectors_path=tmp_path / "nope.csv")


# ------------------------------------------------------------------ column names


def test_map_columns() -> None:
    rename, ignored = map_columns(
        ["Date", "Name", "OPEN", "High", "low", "Close", "Volume", "Adj Close", "Extra"]
    )
    assert rename == {
        "Date": "date",
        "Name": "ticker",
        "OPEN": "open",
        "High": "high",
        "low": "low",
        "Close": "close",
        "Volume": "volume",
        "Adj Close": "adj_close",
    }
    assert ignored == ["Extra"]
    # the contract's own name beats an alias; the loser is ignored
    rename, ignored = map_columns(["name", "ticker", "symbol", "adj_close", "Adj Close", "Market Cap"])
    assert rename == {"ticker": "ticker", "adj_close": "adj_close", "Market Cap": "market_cap"}
    assert ignored == ["name", "symbol", "Adj Close"]


def test_csv_with_kaggle_spellings(
    tmp_path: Path, frame: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    raw = frame[list(schema.REQUIRED_COLUMNS) + ["adj_close"]].rename(
        columns={
            "date": "Date",
            "ticker": "Name",
            "open": "Open",
            "high": "HIGH",
            "close": "Close",
            "adj_close": "Adj Close",
        }
    )
    raw["comment"] = "x"
    raw["Exchange"] = "NYSE"
    path = tmp_path / "kaggle.csv"
    raw.to_csv(path, index=False, date_format="%Y-%m-%d")
    with caplog.at_level(logging.INFO, logger=FILES_LOGGER):
        got, _ = load_file(path)
    pd.testing.assert_frame_equal(got, frame[list(schema.REQUIRED_COLUMNS) + ["adj_close"]])
    ignored = [r.getMessage() for r in caplog.records if "ignored" in r.getMessage()]
    assert (
        len(ignored) == 1 and "ignored 2 columns outside the data contract: comment, Exchange" in ignored[0]
    )


def test_parquet_with_symbol_and_adj_close(tmp_path: Path, frame: pd.DataFrame) -> None:
    raw = frame[list(schema.REQUIRED_COLUMNS) + ["adj_close"]].rename(
        columns={"ticker": "Symbol", "date": "DATE", "adj_close": "adj close"}
    )
    raw["volume"] = raw["volume"].astype("int64")
    path = tmp_path / "sym.parquet"
    raw.to_parquet(path, index=False)
    got, _ = load_file(path)
    pd.testing.assert_frame_equal(got, frame[list(schema.REQUIRED_COLUMNS) + ["adj_close"]])


def test_missing_required_column_names_the_file(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "novol.csv"
    frame.drop(columns=["volume"]).to_csv(path, index=False)
    with pytest.raises(DataValidationError, match=r"novol\.csv.*volume") as ei:
        load_file(path)
    assert ei.value.rule == "missing_columns"


# ------------------------------------------------------------------ sector join


def test_sector_join(tmp_path: Path, frame: pd.DataFrame, caplog: pytest.LogCaptureFixture) -> None:
    path = save_file(frame.drop(columns=["sector"]), tmp_path / "p.parquet")
    sec = sectors_csv(tmp_path, "ticker,name,sector,extra\nAAA,A Corp,Utilities,1\nBBB,B Inc.,Financials,2\n")
    with caplog.at_level(logging.INFO, logger=FILES_LOGGER):
        got, _ = load_file(path, sectors_path=sec)
    by_ticker = got.drop_duplicates("ticker").set_index("ticker")["sector"]
    assert by_ticker["AAA"] == "Utilities" and by_ticker["BBB"] == "Financials"
    assert pd.isna(by_ticker["NA"])
    assert got["sector"].dtype == object
    assert list(got.columns) == [c for c in schema.ALL_COLUMNS if c in frame.columns]
    warn = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warn) == 1 and "1 tickers have no sector" in warn[0].getMessage()
    assert warn[0].getMessage().endswith(": NA")


def test_sector_file_replaces_sector_column_and_accepts_symbol(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = save_file(frame, tmp_path / "p.csv")
    sec = sectors_csv(tmp_path, "Symbol,Name,GICS Sector\nAAA,x,Materials\nBBB,y,Energy\nNA,z,Real Estate\n")
    got, _ = load_file(path, sectors_path=sec)
    assert got.drop_duplicates("ticker")["sector"].tolist() == ["Materials", "Energy", "Real Estate"]


def test_bad_sector_files(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = save_file(frame, tmp_path / "p.parquet")
    with pytest.raises(ValueError, match="needs columns 'ticker' and 'sector'"):
        load_file(path, sectors_path=sectors_csv(tmp_path, "ticker,industry\nAAA,x\n"))
    with pytest.raises(ValueError, match=r"more than one sector for \['AAA'\]"):
        load_file(path, sectors_path=sectors_csv(tmp_path, "ticker,sector\nAAA,x\nAAA,y\n"))


# ------------------------------------------------------------------ filters


@pytest.mark.parametrize("name", ["p.parquet", "p.csv"])
def test_filters(tmp_path: Path, frame: pd.DataFrame, name: str, caplog: pytest.LogCaptureFixture) -> None:
    path = save_file(frame, tmp_path / name)
    d = frame["date"].drop_duplicates().tolist()
    got, _ = load_file(path, tickers=["BBB", "NA"], start=d[1], end=str(d[3].date()))
    want = frame[frame["ticker"].isin(["BBB", "NA"]) & frame["date"].between(d[1], d[3])].reset_index(
        drop=True
    )
    pd.testing.assert_frame_equal(got, want)
    got, _ = load_file(path, start="2023-01-01")
    assert got["date"].min() == pd.Timestamp("2023-01-02") and len(got) == 3 * 3
    with caplog.at_level(logging.WARNING, logger=FILES_LOGGER):
        got, _ = load_file(path, tickers=["AAA", "ZZZ"])
    assert set(got["ticker"]) == {"AAA"} and "requested tickers not found: ZZZ" in caplog.text
    with pytest.raises(DataValidationError) as ei:
        load_file(path, tickers=["ZZZ"])
    assert ei.value.rule == "empty"
    with pytest.raises(TypeError, match="list of strings"):
        load_file(path, tickers="AAA")


def test_date_filter_on_text_dates_in_parquet(tmp_path: Path, frame: pd.DataFrame) -> None:
    """Dates stored as text cannot be pushed down; they are filtered after parsing."""
    tbl = pa.Table.from_pandas(frame.assign(date=frame["date"].dt.strftime("%Y-%m-%d")), preserve_index=False)
    path = tmp_path / "text_dates.parquet"
    pq.write_table(tbl, path)
    got, _ = load_file(path, tickers=["AAA"], end="2022-12-29")
    assert got["date"].tolist() == [pd.Timestamp("2022-12-28"), pd.Timestamp("2022-12-29")]
    assert got["date"].dtype == "datetime64[ns]"


# ------------------------------------------------------------------ strict vs cleaning


def test_strict_load_raises_cleaning_load_reports(tmp_path: Path, frame: pd.DataFrame) -> None:
    raw = frame.copy()
    raw.loc[8, "open"] = np.nan  # BBB, 3rd day
    path = tmp_path / "dirty.csv"
    raw.to_csv(path, index=False)
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    assert (ei.value.rule, ei.value.ticker, ei.value.dates) == ("missing_value", "BBB", [raw["date"][8]])

    got, report = load_file(path, clean="repair")
    assert report is not None and report.mode == "repair" and len(got) == 18
    assert [(a.rule, a.ticker, a.date, a.action) for a in report.actions] == [
        ("missing_value", "BBB", raw["date"][8], "repaired")
    ]
    assert got.loc[8, "open"] == frame.loc[7, "close"]
    schema.validate(got)

    got, report = load_file(path, clean="drop")
    assert (
        report is not None
        and len(got) == 17
        and raw["date"][8] not in set(got.loc[got["ticker"] == "BBB", "date"])
    )
    with pytest.raises(ValueError, match="clean must be"):
        load_file(path, clean="fix")  # type: ignore[arg-type]


def test_strict_load_does_not_sort(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "rev.csv"
    frame.iloc[::-1].to_csv(path, index=False)
    with pytest.raises(DataValidationError) as ei:
        load_file(path)
    assert ei.value.rule == "sort_order"
    got, report = load_file(path, clean="repair")
    pd.testing.assert_frame_equal(got, frame)
    assert report is not None and [a.rule for a in report.actions] == ["sort_order"]


def test_empty_cells(tmp_path: Path) -> None:
    path = tmp_path / "holes.csv"
    path.write_text(
        "date,ticker,open,high,low,close,volume\n"
        "2023-01-03,X,1,2,0.5,1.5,10\n"
        "2023-01-04,X,,2,0.5,1.5,NaN\n"
        "2023-01-05,,1,2,0.5,1.5,10\n"
    )
    raw, report = load_file(path, clean="drop")
    assert report is not None
    assert [(a.rule, a.ticker) for a in report.actions] == [
        ("key_null", "<null>"),
        ("volume_nonnegative", "X"),
    ]
    assert len(raw) == 1


# ------------------------------------------------------------------ the real S&P 500 sample


def _sample_dir() -> Path | None:
    env = os.environ.get("ENSEMBLE_SAMPLE_DATA")
    d = Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"
    return d if (d / "sp500_daily.parquet").is_file() and (d / "sp500_sectors.csv").is_file() else None


SAMPLE = _sample_dir()
needs_sample = pytest.mark.skipif(
    SAMPLE is None,
    reason="real S&P 500 sample not found: set ENSEMBLE_SAMPLE_DATA or put it at ../shared/data (repo root)",
)


@pytest.fixture(scope="module")
def repaired() -> tuple[pd.DataFrame, schema.CleaningReport]:
    assert SAMPLE is not None
    df, report = load_file(
        SAMPLE / "sp500_daily.parquet", sectors_path=SAMPLE / "sp500_sectors.csv", clean="repair"
    )
    assert report is not None
    return df, report


NAN_OPENS = [
    ("BHF", "2017-07-26"),
    ("DHR", "2015-07-17"),
    ("DHR", "2016-01-12"),
    ("ES", "2015-07-17"),
    ("FTV", "2016-07-01"),
    ("O", "2015-07-17"),
    ("O", "2016-01-12"),
    ("REGN", "2015-06-09"),
    ("UA", "2016-04-07"),
    ("VRTX", "2015-05-12"),
    ("WRK", "2015-06-26"),
]
OHLC_BAD = [
    ("AOS", "2014-05-19"),
    ("BBY", "2016-03-14"),
    ("CHD", "2014-05-19"),
    ("CHK", "2014-06-30"),
    ("DHR", "2014-11-06"),
    ("IP", "2014-07-01"),
    ("LNT", "2016-05-19"),
    ("O", "2014-08-27"),
    ("O", "2014-11-06"),
    ("SPG", "2014-05-28"),
    ("UA", "2016-06-10"),
    ("WRK", "2016-05-13"),
]
LATE_STARTERS = (
    "ALLE APTV BHF BHGE CFG COTY CSRA DWDP DXC EVHC FOX FOXA FTV GOOG HLT HPE HPQ INFO IQV KHC NAVI "
    "NWS NWSA PYPL QRVO SYF UA WLTW WRK"
).split()


def _pairs(items: list[tuple[str, str]]) -> list[tuple[str, pd.Timestamp]]:
    return [(t, pd.Timestamp(d)) for t, d in items]


@needs_sample
def test_sample_strict_load_fails_on_the_first_nan_open() -> None:
    assert SAMPLE is not None
    with pytest.raises(DataValidationError) as ei:
        load_file(SAMPLE / "sp500_daily.parquet", sectors_path=SAMPLE / "sp500_sectors.csv")
    e = ei.value
    assert (e.rule, e.ticker, e.dates) == ("missing_value", "BHF", [pd.Timestamp("2017-07-26")])
    assert (e.n_rows, e.n_tickers) == (11, 9)


@needs_sample
def test_sample_repair_load(repaired: tuple[pd.DataFrame, schema.CleaningReport]) -> None:
    df, report = repaired
    assert schema.validate(df) is df
    dropped = [a for a in report.actions if a.action == "dropped"]
    assert report.rows_in == 619_040 and len(df) == report.rows_out == 619_040 - len(dropped)
    assert dropped == []
    assert df["ticker"].nunique() == 505 and df["sector"].nunique() == 11 and not df["sector"].isna().any()
    assert _keys(report, "missing_value") == _pairs(NAN_OPENS)
    assert _keys(report, "ohlc_consistency") == _pairs(OHLC_BAD)
    assert {a.action for a in report.actions} == {"repaired"}
    bhf = df[df["ticker"] == "BHF"].set_index("date")
    day = pd.Timestamp("2017-07-26")
    assert bhf.at[day, "open"] == bhf["close"].shift(1)[day]  # repaired open = previous close


def _keys(report: schema.CleaningReport, rule: str) -> list[tuple[str, pd.Timestamp | None]]:
    return [(a.ticker, a.date) for a in report.actions if a.rule == rule]


@needs_sample
def test_sample_findings_match_source_md(repaired: tuple[pd.DataFrame, schema.CleaningReport]) -> None:
    assert SAMPLE is not None
    df, report = repaired
    found = {(f.kind, f.ticker, f.date) for f in report.findings}
    for t, d in [("LNT", "2016-05-19"), ("NWL", "2017-09-14")]:
        assert ("suspect_bad_print", t, pd.Timestamp(d)) in found
    for t, d in [
        ("DISCA", "2014-08-07"),
        ("DISCK", "2014-08-07"),
        ("BAX", "2015-07-01"),
        ("EBAY", "2015-07-20"),
        ("NI", "2015-07-02"),
        ("AMD", "2016-04-22"),
    ]:
        assert ("large_jump", t, pd.Timestamp(d)) in found
    by_kind = report.findings_frame().groupby("kind")["ticker"].apply(set)
    assert by_kind["missing_days"] == {"O", "DHR", "ES", "ICE", "BMY", "ORCL"}
    assert by_kind["short_history"] == set(LATE_STARTERS)
    assert ("short_history", "APTV", pd.Timestamp("2017-12-05")) in found
    # findings are reported, not changed: NWL's bad bar is exactly as in the file
    raw = pq.read_table(
        SAMPLE / "sp500_daily.parquet",
        filters=[("ticker", "=", "NWL"), ("date", "=", pd.Timestamp("2017-09-14"))],
    ).to_pandas()
    kept = df[(df["ticker"] == "NWL") & (df["date"] == pd.Timestamp("2017-09-14"))]
    assert (
        kept[["open", "high", "low", "close"]].to_numpy().tolist()
        == raw[["open", "high", "low", "close"]].to_numpy().tolist()
    )


@needs_sample
def test_sample_filtered_load_is_quick_and_exact() -> None:
    assert SAMPLE is not None
    df, _ = load_file(
        SAMPLE / "sp500_daily.parquet", tickers=["AAPL", "MSFT"], start="2014-01-01", end="2014-12-31"
    )
    assert set(df["ticker"]) == {"AAPL", "MSFT"} and len(df) == 2 * 252
    assert df["date"].min() == pd.Timestamp("2014-01-02") and df["date"].max() == pd.Timestamp("2014-12-31")
    assert df.loc[df["ticker"] == "AAPL", "close"].iloc[0] == pytest.approx(79.0185, abs=1e-3)


@needs_sample
def test_sp500_report_cli(capsys: pytest.CaptureFixture[str]) -> None:
    from ensemble.data import sp500_report

    assert sp500_report.main(["--data-dir", str(SAMPLE)]) == 0
    out = capsys.readouterr().out
    assert "first rule broken: missing_value" in out
    for text in (
        "repaired     11 rows  [missing_value]",
        "repaired     12 rows  [ohlc_consistency]",
        "LNT    2016-05-19",
        "NWL    2017-09-14",
        "EBAY   2015-07-20",
        "DHR 16, O 16, ES 10, ICE 5, BMY 2, ORCL 2",
        "APTV 44",
        "rows 619,040, tickers 505",
        "sectors: 11",
    ):
        assert text in out


def test_sp500_report_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ensemble.data import sp500_report

    assert sp500_report.main(["--data-dir", str(tmp_path)]) == 2
    assert "sample data not found" in capsys.readouterr().err
