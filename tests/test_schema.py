"""The data contract: coerce, validate (one fixture per rule) and clean (drop / repair / findings)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest

from ensemble.data import schema
from ensemble.data.schema import DataValidationError, clean, coerce, validate

DATES = pd.bdate_range("2021-03-01", periods=5)


def small_frame(tickers: tuple[str, ...] = ("A", "B"), dates: pd.DatetimeIndex = DATES) -> pd.DataFrame:
    """A valid contract frame: consistent OHLC, sorted by (ticker, date)."""
    rows = []
    for i, t in enumerate(tickers):
        for j, d in enumerate(dates):
            c = 10.0 * (i + 1) + j
            rows.append((d, t, c - 0.5, c + 1.0, c - 1.0, c, 1000.0 * (j + 1)))
    return pd.DataFrame(rows, columns=list(schema.REQUIRED_COLUMNS))


def smooth_frame(tickers: tuple[str, ...], n_days: int = 40) -> pd.DataFrame:
    """A longer valid frame with small, smooth daily moves (no finding of any kind)."""
    dates = pd.bdate_range("2020-01-01", periods=n_days)
    frames = []
    for i, t in enumerate(tickers):
        close = 50.0 * (i + 1) * np.exp(0.01 * np.sin(np.arange(n_days) / 3.0 + i))
        frames.append(
            pd.DataFrame(
                {
                    "date": dates,
                    "ticker": t,
                    "open": close * 0.999,
                    "high": close * 1.01,
                    "low": close * 0.99,
                    "close": close,
                    "volume": 1e6,
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def _set(df: pd.DataFrame, ticker: str, date: pd.Timestamp, **values: object) -> pd.DataFrame:
    out = df.copy()
    row = (out["ticker"] == ticker) & (out["date"] == date)
    assert row.sum() == 1
    for col, v in values.items():
        if not isinstance(v, float | int) and out[col].dtype != object:
            out[col] = out[col].astype(object)
        out.loc[row, col] = v
    return out


def _at(df: pd.DataFrame, ticker: str, date: pd.Timestamp) -> pd.Series:
    row = df[(df["ticker"] == ticker) & (df["date"] == date)]
    assert len(row) == 1
    return row.iloc[0]


# ------------------------------------------------------------------ validate


def test_valid_frame_passes_unchanged() -> None:
    df = small_frame()
    before = df.copy()
    assert validate(df) is df
    pd.testing.assert_frame_equal(df, before)


def test_optional_columns_may_be_nan_or_negative() -> None:
    df = small_frame().assign(pe=-3.0, sector="Energy", sentiment=np.nan)
    assert validate(df) is df


def test_missing_columns() -> None:
    with pytest.raises(DataValidationError) as ei:
        validate(small_frame().drop(columns=["volume"]))
    assert ei.value.rule == "missing_columns"
    assert ei.value.ticker is None and ei.value.dates == []
    assert "missing_columns" in str(ei.value) and "volume" in str(ei.value)


def test_empty() -> None:
    with pytest.raises(DataValidationError) as ei:
        validate(small_frame().iloc[:0])
    assert ei.value.rule == "empty"
    assert "empty" in str(ei.value)


def test_key_null_names_the_ticker_whose_date_is_missing() -> None:
    df = small_frame()
    df.loc[7, "date"] = pd.NaT  # ticker B
    with pytest.raises(DataValidationError) as ei:
        validate(df)
    e = ei.value
    assert (e.rule, e.ticker) == ("key_null", "B")
    assert pd.isna(e.dates[0])
    assert "key_null" in str(e) and "'B'" in str(e)


def _date_as_text(df: pd.DataFrame) -> pd.DataFrame:
    out = df.astype({"date": object})
    out.loc[6, "date"] = "2021-03-02 (sic)"
    return out


def _close_as_text(df: pd.DataFrame) -> pd.DataFrame:
    out = df.astype({"close": object})
    out.loc[7, "close"] = "n/a"
    return out


def _duplicate(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.concat([df.iloc[:7], df.iloc[[6]], df.iloc[7:]], ignore_index=True)
    return out


def _swap_dates(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    out.loc[[7, 8], "date"] = [DATES[3], DATES[2]]  # B: d0 d1 d3 d2 d4
    return out


# rule, mutation of small_frame(), offending ticker, first offending date
RULE_CASES: list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame], str, object]] = [
    ("date_type", _date_as_text, "B", "2021-03-02 (sic)"),
    ("numeric_type", _close_as_text, "B", DATES[2]),
    ("duplicate_key", _duplicate, "B", DATES[1]),
    ("sort_order", _swap_dates, "B", DATES[2]),
    ("missing_value", lambda df: _set(df, "B", DATES[3], high=np.nan), "B", DATES[3]),
    ("close_positive", lambda df: _set(df, "B", DATES[1], close=0.0, low=-1.0, open=-0.5), "B", DATES[1]),
    ("price_positive", lambda df: _set(df, "B", DATES[2], low=0.0), "B", DATES[2]),
    ("low_le_open_close", lambda df: _set(df, "B", DATES[4], low=14.0, open=14.5, close=13.9), "B", DATES[4]),
    ("high_ge_open_close", lambda df: _set(df, "B", DATES[0], high=10.0), "B", DATES[0]),
    ("volume_nonnegative", lambda df: _set(df, "B", DATES[3], volume=-1.0), "B", DATES[3]),
]


@pytest.mark.parametrize(("rule", "mutate", "ticker", "first"), RULE_CASES, ids=[c[0] for c in RULE_CASES])
def test_each_rule_names_rule_ticker_and_first_date(
    rule: str, mutate: Callable[[pd.DataFrame], pd.DataFrame], ticker: str, first: object
) -> None:
    df = mutate(small_frame())
    with pytest.raises(DataValidationError) as ei:
        validate(df)
    e = ei.value
    assert e.rule == rule
    assert e.ticker == ticker
    assert e.dates[0] == first
    msg = str(e)
    assert f"'{rule}'" in msg and f"'{ticker}'" in msg
    shown = first if isinstance(first, str) else first.strftime("%Y-%m-%d")  # type: ignore[attr-defined]
    assert shown in msg


def test_first_offending_ticker_and_dates_and_counts() -> None:
    df = small_frame(("A", "B", "C"))
    for t, d in [("B", DATES[3]), ("B", DATES[1]), ("C", DATES[0])]:
        df = _set(df, t, d, volume=-5.0)
    with pytest.raises(DataValidationError) as ei:
        validate(df)
    e = ei.value
    assert e.ticker == "B" and e.dates == [DATES[1], DATES[3]]
    assert (e.n_rows, e.n_tickers) == (3, 2)
    assert "3 offending rows in all, 2 tickers" in str(e)


def test_low_equal_to_open_is_fine_within_rounding() -> None:
    df = _set(small_frame(), "A", DATES[0], low=9.5 * (1 + 1e-12))  # open 9.5
    validate(df)


# ------------------------------------------------------------------ coerce


def test_coerce_converts_strings_and_ints() -> None:
    raw = small_frame()
    raw["date"] = raw["date"].dt.strftime("%Y-%m-%d")
    raw["volume"] = raw["volume"].astype("int64")
    raw["ticker"] = raw["ticker"].astype(object)
    before = raw.copy()
    out = coerce(raw)
    assert out["date"].dtype == "datetime64[ns]"
    assert out["volume"].dtype == "float64"
    assert out["date"].tolist() == list(DATES) * 2
    assert out["volume"].tolist() == [1000.0 * (j + 1) for j in range(5)] * 2
    pd.testing.assert_frame_equal(raw, before)  # input untouched
    validate(out)


def test_coerce_numeric_strings() -> None:
    out = coerce(small_frame().astype({"close": str}))
    assert out["close"].dtype == "float64" and out["close"].iloc[0] == 10.0


def test_coerce_refuses_tz_aware_dates() -> None:
    # a zone would shift the exchange's trading day (UTC midnight is the previous evening in New York)
    raw = small_frame()
    raw["date"] = raw["date"].dt.tz_localize("UTC")
    with pytest.raises(DataValidationError) as ei:
        coerce(raw)
    assert (ei.value.rule, ei.value.column, ei.value.row) == ("date_timezone", "date", 0)


def test_coerce_raises_on_unparseable_values() -> None:
    raw = small_frame().astype({"date": object})
    raw.loc[8, "date"] = "yesterday"
    with pytest.raises(DataValidationError) as ei:
        coerce(raw)
    assert (ei.value.rule, ei.value.ticker, ei.value.dates) == ("date_type", "B", ["yesterday"])

    raw = small_frame().astype({"volume": object})
    raw.loc[2, "volume"] = "lots"
    with pytest.raises(DataValidationError) as ei:
        coerce(raw)
    assert (ei.value.rule, ei.value.ticker, ei.value.dates) == ("numeric_type", "A", [DATES[2]])

    with pytest.raises(DataValidationError) as ei:
        coerce(small_frame().drop(columns=["ticker"]))
    assert ei.value.rule == "missing_columns"


# ------------------------------------------------------------------ clean: drop / repair


def dirty_frame() -> pd.DataFrame:
    """small_frame(A, B, C, D) with one defect of each repairable/droppable kind, unsorted."""
    df = small_frame(("A", "B", "C", "D"))
    df = _set(df, "B", DATES[2], open=np.nan)  # high/low valid; prev close 21 lies in [20, 23]
    df = _set(df, "B", DATES[4], open=np.nan, high=np.nan, low=np.nan)
    df = _set(df, "C", DATES[3], high=32.0)  # close 33 above high
    df = _set(df, "C", DATES[1], low=31.5)  # low above open 30.5 and close 31
    df = _set(df, "D", DATES[1], close=np.nan)
    df = _set(df, "D", DATES[3], volume=-1.0)
    df = pd.concat([df, df.iloc[[2]].assign(volume=99.0)], ignore_index=True)  # duplicate key A d2
    return df.iloc[::-1].reset_index(drop=True)  # reversed: needs sorting


def _keys(report: schema.CleaningReport, rule: str, action: str) -> list[tuple[str, pd.Timestamp]]:
    a = report.actions_frame()
    a = a[(a["rule"] == rule) & (a["action"] == action)]
    return list(zip(a["ticker"], a["date"], strict=True))


def test_clean_drop_drops_exactly_the_bad_rows() -> None:
    raw = dirty_frame()
    out, rep = clean(raw, mode="drop")
    assert validate(out) is out
    assert (rep.rows_in, rep.rows_out, len(out)) == (21, 14, 14)
    assert _keys(rep, "duplicate_key", "dropped") == [("A", DATES[2])]
    assert _keys(rep, "close_positive", "dropped") == [("D", DATES[1])]
    assert _keys(rep, "volume_nonnegative", "dropped") == [("D", DATES[3])]
    assert _keys(rep, "missing_value", "dropped") == [("B", DATES[2]), ("B", DATES[4])]
    assert _keys(rep, "ohlc_consistency", "dropped") == [("C", DATES[1]), ("C", DATES[3])]
    assert [(a.ticker, a.date, a.action) for a in rep.actions if a.rule == "sort_order"] == [
        ("*", None, "sorted")
    ]
    assert len(rep.actions) == 8
    assert "NaT" not in rep.summary() and "[sort_order]  e.g. *" in rep.summary()
    # the kept duplicate is the first row of the key in input order (the appended one, volume 99)
    assert _at(out, "A", DATES[2])["volume"] == 99.0
    kept = set(zip(out["ticker"], out["date"], strict=True))
    assert len(kept) == 14 and ("B", DATES[2]) not in kept and ("C", DATES[3]) not in kept
    # every kept row has the values it came in with
    clean_ref = coerce(small_frame(("A", "B", "C", "D"))).set_index(["ticker", "date"])
    rest = out.drop(index=out.index[(out["ticker"] == "A") & (out["date"] == DATES[2])])
    rest = rest.set_index(["ticker", "date"])
    pd.testing.assert_frame_equal(rest, clean_ref.loc[rest.index], check_dtype=False)


def test_clean_repair_repairs_from_the_past_and_drops_the_rest() -> None:
    raw = dirty_frame()
    out, rep = clean(raw, mode="repair")
    assert validate(out) is out
    assert (rep.rows_in, rep.rows_out, len(out)) == (21, 18, 18)
    assert _keys(rep, "duplicate_key", "dropped") == [("A", DATES[2])]
    assert _keys(rep, "close_positive", "dropped") == [("D", DATES[1])]
    assert _keys(rep, "volume_nonnegative", "dropped") == [("D", DATES[3])]
    assert _keys(rep, "missing_value", "repaired") == [("B", DATES[2]), ("B", DATES[4])]
    assert _keys(rep, "ohlc_consistency", "repaired") == [("C", DATES[1]), ("C", DATES[3])]
    assert len(rep.actions) == 8

    b2, b4 = _at(out, "B", DATES[2]), _at(out, "B", DATES[4])
    assert b2["open"] == 21.0 == _at(out, "B", DATES[1])["close"]  # open := previous close
    assert (b2["high"], b2["low"], b2["close"]) == (23.0, 21.0, 22.0)  # valid high/low kept
    assert b4["open"] == 23.0 == _at(out, "B", DATES[3])["close"]
    assert (b4["high"], b4["low"], b4["close"]) == (24.0, 23.0, 24.0)  # max/min(open, close)
    c1, c3 = _at(out, "C", DATES[1]), _at(out, "C", DATES[3])
    assert (c1["open"], c1["high"], c1["low"], c1["close"]) == (30.5, 32.0, 30.5, 31.0)  # low widened
    assert (c3["open"], c3["high"], c3["low"], c3["close"]) == (32.5, 33.0, 32.0, 33.0)  # high widened


def test_repaired_open_outside_the_range_widens_it_in_the_same_repair() -> None:
    df = _set(small_frame(), "A", DATES[3], open=np.nan, high=13.5, low=12.5)  # prev close 12, close 13
    out, rep = clean(df)
    row = _at(out, "A", DATES[3])
    assert (row["open"], row["high"], row["low"], row["close"]) == (12.0, 13.5, 12.0, 13.0)
    assert [(a.rule, a.ticker, a.date) for a in rep.actions] == [("missing_value", "A", DATES[3])]


def test_nonpositive_prices_are_their_own_rule() -> None:
    df = _set(small_frame(), "A", DATES[2], low=0.0)
    out_d, rep_d = clean(df, mode="drop")
    assert _keys(rep_d, "price_positive", "dropped") == [("A", DATES[2])] and len(out_d) == 9
    out_r, rep_r = clean(df, mode="repair")
    assert _keys(rep_r, "price_positive", "repaired") == [("A", DATES[2])]
    assert _at(out_r, "A", DATES[2])["low"] == 11.5  # min(open 11.5, close 12)


def test_repairs_use_only_the_past() -> None:
    """Changing every row after a repaired day leaves the repaired day as it was."""
    df = _set(small_frame(), "B", DATES[2], open=np.nan, high=np.nan, low=np.nan)
    later = df["date"] > DATES[2]
    poisoned = df.copy()
    poisoned.loc[later, ["open", "high", "low", "close"]] *= 3.0
    a, _ = clean(df)
    b, _ = clean(poisoned)
    upto = a["date"] <= DATES[2]
    pd.testing.assert_frame_equal(a[upto], b[upto])


def test_clean_leaves_a_valid_frame_alone() -> None:
    df = smooth_frame(("A", "B"), n_days=30)
    out, rep = clean(df, short_history=10)
    pd.testing.assert_frame_equal(out, coerce(df))
    assert rep.actions == [] and rep.findings == []
    assert "no rows changed" in rep.summary()


def test_clean_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="mode"):
        clean(small_frame(), mode="fix")  # type: ignore[arg-type]


# ------------------------------------------------------------------ clean: findings


def findings_frame() -> pd.DataFrame:
    """smooth_frame with a planted spike (S), jump (J), gap (G) and a late, short ticker (N)."""
    df = smooth_frame(("G", "J", "N", "S"), n_days=40)
    d = df["date"].drop_duplicates().sort_values().reset_index(drop=True)
    s_day = (df["ticker"] == "S") & (df["date"] == d[20])
    df.loc[s_day, ["open", "high", "low", "close"]] *= 1.6  # whole bar off for one day
    j_after = (df["ticker"] == "J") & (df["date"] >= d[25])
    df.loc[j_after, ["open", "high", "low", "close"]] *= 0.5  # unadjusted 2:1 split
    df = df[~((df["ticker"] == "G") & df["date"].isin(d[10:13]))]  # 3 missing days
    df = df[~((df["ticker"] == "N") & (df["date"] < d[30]))]  # listed late: 10 rows
    return df.reset_index(drop=True)


def test_findings_spike_jump_gap_short_history_reported_not_changed() -> None:
    df = findings_frame()
    d = pd.bdate_range("2020-01-01", periods=40)
    out, rep = clean(df, short_history=20)
    pd.testing.assert_frame_equal(out, coerce(df))  # findings never change a row
    assert rep.actions == []
    got = [(f.kind, f.ticker, f.date) for f in rep.findings]
    assert got == [
        ("suspect_bad_print", "S", d[20]),
        ("large_jump", "J", d[25]),
        ("missing_days", "G", d[13]),
        ("short_history", "N", d[30]),
    ]
    fnd = rep.findings_frame().set_index("kind")["detail"]
    assert "close moved +" in fnd["suspect_bad_print"] and "close moved -50%" in fnd["large_jump"]
    assert fnd["missing_days"].startswith("3 trading days")
    assert "10 rows" in fnd["short_history"]
    summary = rep.summary()
    for line in ("suspect_bad_print", "large_jump", "missing_days", "short_history", "S 2020-01-29"):
        assert line in summary


def test_short_history_by_row_count_alone() -> None:
    _, rep = clean(smooth_frame(("A",), n_days=30), short_history=31)
    assert [(f.kind, f.ticker) for f in rep.findings] == [("short_history", "A")]


def test_spike_flag_uses_no_data_beyond_the_next_day() -> None:
    df = findings_frame()
    d = pd.bdate_range("2020-01-01", periods=40)
    poisoned = df.copy()
    poisoned.loc[(df["ticker"] == "S") & (df["date"] > d[21]), "close"] *= 2.0
    _, rep = clean(poisoned, short_history=20)
    assert ("suspect_bad_print", "S", d[20]) in [(f.kind, f.ticker, f.date) for f in rep.findings]


@pytest.mark.parametrize("mode", ["drop", "repair"])
def test_clean_output_passes_validate(mode: str) -> None:
    out, _ = clean(pd.concat([dirty_frame(), findings_frame()], ignore_index=True), mode=mode)  # type: ignore[arg-type]
    assert validate(out) is out
