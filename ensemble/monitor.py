"""Monitoring: accuracy of the logged forecasts, drift of the inputs and of the forecasts, alerts.

Accuracy (:func:`join_realised`, :func:`accuracy_table`, :func:`rank_ic_series`): the prediction log
(:mod:`ensemble.predlog`) joined with the realised forward log return of each forecast,
``log(close[t+h] / close[t])`` h trading rows of the ticker later (:func:`ensemble.features.targets.
forward_log_returns`, the training target), once it is known: a forecast whose horizon has not passed
in the prices is left out. A forecast logged more than once (a re-run, many requests) counts once, the
latest logged. Per version, A/B arm, horizon and model (``ensemble`` and every member), over the last
``rolling_window`` as-of dates: the metrics of :func:`ensemble.backtest.evaluation.evaluate` (mean
per-date Rank IC, ICIR, directional accuracy of the excess forecast, interval coverage: the one
definition of each, in ``ensemble/backtest``).

Drift (:func:`build_drift_reference`, :func:`drift_table`, :func:`forecast_drift`): the training
reference holds, per feature, the quantile bin edges of its training values (``drift_bins`` bins), the
share of values in each bin and a sample of them; :func:`jobs.train` stores it with the version
(extra ``drift_reference``). Recent model inputs (:func:`recent_inputs`: the features of the last
``drift_days`` trading dates through the version's preprocessor, as scoring computes them) are
compared with it: the population stability index over the reference bins,
``PSI = sum((a - e) * ln(a / e))`` (shares floored at :data:`PSI_FLOOR`), and the two-sample KS
statistic against the sample (``scipy.stats.ks_2samp``). Missing values are left out of both (their
shares are reported). The forecast distribution is compared the same way, per horizon, with the
reference's validation forecasts, or without them with the version's earlier logged forecasts.

Alerts (:func:`evaluate_alerts`): a pure function of the tables and the thresholds of
:class:`ensemble.config.MonitoringConfig`, one :class:`Alert` per rule broken; :func:`log_alerts` logs
them. Nothing here imports Ray.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from ensemble.backtest.evaluation import daily_rank_ic, evaluate
from ensemble.config import MonitoringConfig, Settings
from ensemble.features import Preprocessor, build_features
from ensemble.features.targets import realised_forward_returns, target_name
from ensemble.predlog import interval_columns, member_columns

logger = logging.getLogger(__name__)

PSI_FLOOR = 1e-4  # a bin's share below this counts as this (an empty bin would make PSI infinite)
LOG_KEYS = ["version", "arm", "as_of", "ticker", "horizon"]
GROUP = ["version", "arm", "horizon"]
ENSEMBLE = "ensemble"


# -- accuracy ---------------------------------------------------------------------------------------------
def latest_forecasts(log: pd.DataFrame) -> pd.DataFrame:
    """One row per (version, arm, as_of, ticker, horizon): the latest logged."""
    if log.empty:
        return log.reset_index(drop=True)
    out = log.sort_values("logged_at", kind="stable").drop_duplicates(LOG_KEYS, keep="last")
    return out.sort_values(LOG_KEYS, kind="stable").reset_index(drop=True)


def realised_returns(prices: pd.DataFrame, horizons: Sequence[int]) -> pd.DataFrame:
    """Long ``as_of, ticker, horizon, realised``: the forward log return of every (date, ticker) of
    ``prices`` whose horizon lies inside them (the training target's definition)."""
    t = realised_forward_returns(prices, horizons)
    parts = []
    for h in horizons:
        v = t[target_name(h)].to_numpy(np.float64)
        ok = np.isfinite(v)
        parts.append(
            pd.DataFrame(
                {
                    "as_of": pd.to_datetime(t.loc[ok, "date"]).to_numpy(dtype="datetime64[ns]"),
                    "ticker": t.loc[ok, "ticker"].astype(str).to_numpy(),
                    "horizon": np.full(int(ok.sum()), int(h), dtype=np.int64),
                    "realised": v[ok],
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def join_realised(log: pd.DataFrame, prices: pd.DataFrame, as_of: Any = None) -> pd.DataFrame:
    """The logged forecasts (the latest of each, as of ``as_of`` when given: none later, and only
    prices up to it) whose realised return is known, with it as column ``realised``."""
    if as_of is not None:
        day = pd.Timestamp(as_of)
        log = log.loc[log["as_of"] <= day]
        prices = prices.loc[prices["date"] <= day]
    log = latest_forecasts(log)
    if log.empty:
        return log.assign(realised=pd.Series(dtype=np.float64))
    real = realised_returns(prices, sorted(int(h) for h in log["horizon"].unique()))
    out = log.merge(real, on=["as_of", "ticker", "horizon"], how="inner")
    return out.sort_values(LOG_KEYS, kind="stable").reset_index(drop=True)


def _group(key: Any) -> tuple[str, str, int]:
    version, arm, h = key
    return str(version), str(arm), int(h)


def _models(frame: pd.DataFrame) -> list[str]:
    return [ENSEMBLE, *member_columns(frame.columns)]


def _last_dates(sub: pd.DataFrame, window: int) -> pd.DataFrame:
    dates = np.sort(sub["as_of"].unique())[-window:]
    return sub.loc[sub["as_of"].isin(dates)]


def _as_eval(sub: pd.DataFrame, model: str, h: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(preds, truth) in ensemble.backtest.evaluation's format for one model's column."""
    preds = pd.DataFrame({"date": sub["as_of"], "ticker": sub["ticker"], f"pred_h{h}": sub[model]})
    if model == ENSEMBLE:
        for c in interval_columns(sub.columns):
            preds[f"{c}_h{h}"] = sub[c]
    truth = pd.DataFrame({"date": sub["as_of"], "ticker": sub["ticker"], target_name(h): sub["realised"]})
    return preds, truth


def _levels(frame: pd.DataFrame) -> list[float]:
    return sorted({int(c[2:]) / 100 for c in interval_columns(frame.columns)})


_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")  # jobs.monitor's report names: <as_of>.json

ACCURACY_COLUMNS = (
    "version", "arm", "horizon", "model", "first", "last", "dates", "rows",
    "rank_ic", "icir", "rank_ic_dates", "directional_accuracy",
)  # fmt: skip


def accuracy_table(joined: pd.DataFrame, window: int = 63, *, min_tickers: int = 10) -> pd.DataFrame:
    """Per version, arm, horizon and model (``ensemble`` and each member) over the last ``window``
    as-of dates of the group: :data:`ACCURACY_COLUMNS` plus ``coverage{L}`` (the ensemble's
    intervals). ``dates``/``rows``: forecasts scored; ``rank_ic_dates``: dates with a Rank IC (a date
    needs ``min_tickers`` tickers)."""
    levels = _levels(joined)
    cov = [f"coverage{round(a * 100)}" for a in levels]
    rows: list[dict[str, Any]] = []
    for key, g in joined.groupby(GROUP, sort=True):
        version, arm, h = _group(key)
        sub = _last_dates(g, window)
        for model in _models(sub):
            if not sub[model].notna().any():
                continue
            preds, truth = _as_eval(sub, model, h)
            m = evaluate(preds, truth, [h], levels if model == ENSEMBLE else (), min_obs=min_tickers)[h]
            scored = sub.loc[sub[model].notna()]
            rows.append(
                {
                    "version": version,
                    "arm": arm,
                    "horizon": h,
                    "model": model,
                    "first": scored["as_of"].min(),
                    "last": scored["as_of"].max(),
                    "dates": int(scored["as_of"].nunique()),
                    "rows": int(m["n_obs"]),
                    "rank_ic": m["rank_ic"],
                    "icir": m["icir"],
                    "rank_ic_dates": int(m["n_dates"]),
                    "directional_accuracy": m["directional_accuracy"],
                    **{c: m.get(c, np.nan) for c in cov},
                }
            )
    return pd.DataFrame(rows, columns=[*ACCURACY_COLUMNS, *cov])


def rank_ic_series(joined: pd.DataFrame, window: int = 63, *, min_tickers: int = 10) -> pd.DataFrame:
    """Long ``version, arm, horizon, model, as_of, rank_ic, rolling_rank_ic``: each as-of date's Rank
    IC and its mean over the ``window`` dates ending there (dates without an IC skipped)."""
    parts = []
    for key, g in joined.groupby(GROUP, sort=True):
        version, arm, h = _group(key)
        for model in _models(g):
            if not g[model].notna().any():
                continue
            preds, truth = _as_eval(g, model, h)
            ic = daily_rank_ic(preds, truth, h, min_obs=min_tickers)
            roll = ic.rolling(window, min_periods=1).mean()
            parts.append(
                pd.DataFrame(
                    {"version": version, "arm": arm, "horizon": h, "model": model,
                     "as_of": ic.index, "rank_ic": ic.to_numpy(), "rolling_rank_ic": roll.to_numpy()}
                )
            )  # fmt: skip
    cols = ["version", "arm", "horizon", "model", "as_of", "rank_ic", "rolling_rank_ic"]
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=cols)


def validation_baselines(
    version: str, metrics: Mapping[str, Any], min_windows: float = 2.0
) -> dict[tuple[str, str, int], float]:
    """``(version, model, horizon) -> validation Rank IC`` from a registry version's metrics
    (``{model: {"valid_rank_ic_h5": ..., "valid_ic_dates_h5": ...}}``), each only when measured over
    at least ``min_windows`` non-overlapping h-day windows (``valid_ic_dates_h{h} / h``; kept when the
    count is not recorded): a few dates of overlapping long-horizon labels (the ensemble's purged
    out-of-fold score at 60 days) say too little to alert on a drop from."""
    out: dict[tuple[str, str, int], float] = {}
    for model, m in metrics.items():
        if not isinstance(m, Mapping):
            continue
        for k, v in m.items():
            if str(k).startswith("valid_rank_ic_h") and isinstance(v, int | float) and np.isfinite(v):
                h = int(str(k).rsplit("h", 1)[1])
                n = m.get(f"valid_ic_dates_h{h}")
                if isinstance(n, int | float) and n / h < min_windows:
                    continue
                out[(str(version), str(model), h)] = float(v)
    return out


# -- drift ------------------------------------------------------------------------------------------------
def _finite(values: Any) -> np.ndarray:
    v = pd.to_numeric(pd.Series(np.asarray(values).ravel()), errors="coerce").to_numpy(np.float64)
    return v[np.isfinite(v)]


def _short(v: np.ndarray) -> list[float]:
    return [float(f"{x:.7g}") for x in v]


def _bin_shares(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    counts = np.bincount(np.searchsorted(edges, values, side="right"), minlength=len(edges) + 1)
    return np.asarray(counts / max(len(values), 1), dtype=np.float64)


def column_reference(values: Any, *, bins: int = 10, sample: int = 1000, seed: int = 0) -> dict[str, Any]:
    """One column's reference: interior quantile ``edges`` (duplicates merged), the ``shares`` of its
    finite values per bin (``len(edges) + 1`` bins), a ``sample`` of them (sorted), ``n`` and
    ``nan_share``."""
    raw = np.asarray(values).ravel()
    v = _finite(raw)
    if len(v) == 0:
        return {"edges": [], "shares": [], "sample": [], "n": 0, "nan_share": 1.0 if len(raw) else 0.0}
    edges = np.unique(np.quantile(v, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
    edges = np.asarray(_short(edges))
    pick = np.random.default_rng(seed).choice(len(v), size=min(sample, len(v)), replace=False)
    return {
        "edges": edges.tolist(),
        "shares": _short(_bin_shares(v, edges)),
        "sample": _short(np.sort(v[pick])),
        "n": int(len(v)),
        "nan_share": float(1.0 - len(v) / len(raw)),
    }


def build_drift_reference(
    frame: pd.DataFrame,
    features: Sequence[str],
    *,
    forecasts: pd.DataFrame | None = None,
    bins: int = 10,
    sample: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The training reference of ``features`` (columns of ``frame``, e.g. the training rows of the
    model frame) and, when given, of the ensemble's forecasts (``forecasts``' ``pred_h{h}``, e.g. its
    forecasts of the validation dates): a JSON-able dict (:func:`column_reference` per column). A
    forecast column without a finite value is left out (drift then compares with the earlier log)."""
    missing = [f for f in features if f not in frame.columns]
    if missing:
        raise KeyError(f"the frame lacks the features {missing[:5]} ({len(missing)} in all)")
    dates = pd.to_datetime(frame["date"]) if "date" in frame.columns else None
    ref: dict[str, Any] = {
        "bins": int(bins),
        "rows": int(len(frame)),
        "first": None if dates is None or dates.empty else str(dates.min().date()),
        "last": None if dates is None or dates.empty else str(dates.max().date()),
        "features": {
            str(f): column_reference(frame[f].to_numpy(), bins=bins, sample=sample, seed=seed + i)
            for i, f in enumerate(features)
        },
        "forecasts": {},
    }
    if forecasts is not None:
        for c in forecasts.columns:
            if str(c).startswith("pred_h") and str(c)[6:].isdigit():
                col = column_reference(forecasts[c].to_numpy(), bins=bins, sample=sample, seed=seed)
                if col["n"] > 0:
                    ref["forecasts"][str(c)[6:]] = col
    return ref


def psi(reference: Mapping[str, Any], values: Any) -> float:
    """The population stability index of ``values`` (finite ones) over the reference's bins."""
    v = _finite(values)
    if len(v) == 0 or not reference.get("shares"):
        return float("nan")
    e = np.maximum(np.asarray(reference["shares"], dtype=np.float64), PSI_FLOOR)
    a = np.maximum(_bin_shares(v, np.asarray(reference["edges"], dtype=np.float64)), PSI_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


DRIFT_COLUMNS = ("subject", "psi", "ks", "ks_pvalue", "n_ref", "n_recent", "nan_ref", "nan_recent", "drift")


def drift_row(
    subject: str, reference: Mapping[str, Any], values: Any, psi_threshold: float, ks_threshold: float
) -> dict[str, Any]:
    raw = np.asarray(values).ravel()
    v = _finite(raw)
    p = psi(reference, v)
    sample = np.asarray(reference.get("sample", []), dtype=np.float64)
    if len(v) and len(sample):
        r = stats.ks_2samp(sample, v)
        ks, pv = float(r.statistic), float(r.pvalue)
    else:
        ks = pv = float("nan")
    return {
        "subject": subject,
        "psi": p,
        "ks": ks,
        "ks_pvalue": pv,
        "n_ref": int(reference.get("n", 0)),
        "n_recent": int(len(v)),
        "nan_ref": float(reference.get("nan_share", np.nan)),
        "nan_recent": float(1.0 - len(v) / len(raw)) if len(raw) else float("nan"),
        "drift": bool(p >= psi_threshold or ks >= ks_threshold),
    }


def drift_table(
    reference: Mapping[str, Any],
    recent: pd.DataFrame,
    features: Sequence[str] | None = None,
    *,
    psi_threshold: float = 0.2,
    ks_threshold: float = 0.1,
) -> pd.DataFrame:
    """Per feature (default: every feature of the reference that ``recent`` has): PSI, KS statistic
    and p-value, counts, missing shares and ``drift`` (PSI or KS at or above its threshold)."""
    feats = reference["features"]
    names = [f for f in feats if f in recent.columns] if features is None else list(features)
    unknown = [f for f in names if f not in feats]
    if unknown:
        raise KeyError(f"the drift reference has no features {unknown[:5]}")
    absent = [f for f in names if f not in recent.columns]
    if absent:
        raise KeyError(f"the recent inputs lack the features {absent[:5]}")
    rows = [drift_row(f, feats[f], recent[f].to_numpy(), psi_threshold, ks_threshold) for f in names]
    return pd.DataFrame(rows, columns=list(DRIFT_COLUMNS))


def forecast_drift(
    log: pd.DataFrame,
    version: str,
    *,
    days: int = 21,
    reference: Mapping[str, Any] | None = None,
    psi_threshold: float = 0.2,
    ks_threshold: float = 0.1,
    bins: int = 10,
    sample: int = 1000,
) -> pd.DataFrame:
    """Drift of the ensemble's logged forecasts of ``version`` over its last ``days`` as-of dates, per
    horizon (subject ``forecast_h{h}``), against ``reference['forecasts']`` (the validation
    forecasts) when it has the horizon, else against the version's forecasts logged before those
    dates (``baseline`` says which; no row without either)."""
    sub = latest_forecasts(log.loc[log["version"] == version])
    rows = []
    refs = dict((reference or {}).get("forecasts", {}))
    for key, g in sub.groupby("horizon", sort=True):
        h = int(str(key))
        dates = np.sort(g["as_of"].unique())
        recent = g.loc[g["as_of"].isin(dates[-days:])]
        if str(h) in refs:
            ref, baseline = refs[str(h)], "validation"
        else:
            earlier = g.loc[~g["as_of"].isin(dates[-days:]), ENSEMBLE]
            if earlier.notna().sum() < 2:
                continue
            ref, baseline = column_reference(earlier.to_numpy(), bins=bins, sample=sample), "earlier log"
        row = drift_row(f"forecast_h{h}", ref, recent[ENSEMBLE].to_numpy(), psi_threshold, ks_threshold)
        rows.append({**row, "version": version, "horizon": h, "baseline": baseline})
    return pd.DataFrame(rows, columns=[*DRIFT_COLUMNS, "version", "horizon", "baseline"])


def recent_inputs(
    prices: pd.DataFrame,
    settings: Settings,
    preprocessor: Preprocessor,
    as_of: Any = None,
    days: int = 21,
) -> pd.DataFrame:
    """The model inputs (the version's preprocessor applied to the features, as scoring computes them)
    of the last ``days`` trading dates up to ``as_of`` (default: the latest date of ``prices``)."""
    from ensemble.scoring import history_days  # the warm-up scoring reads before a date

    day = pd.Timestamp(prices["date"].max()) if as_of is None else pd.Timestamp(as_of)
    upto = prices.loc[prices["date"] <= day]
    dates = np.sort(upto["date"].unique())
    if len(dates) == 0:
        raise ValueError(f"no prices dated {day.date()} or earlier")
    first = dates[max(0, len(dates) - days - history_days(settings))]
    window = upto.loc[upto["date"] >= first].sort_values(["ticker", "date"], kind="stable")
    feats = build_features(window.reset_index(drop=True), settings.horizons, n_jobs=None)
    frame = preprocessor.transform(
        feats.drop(columns=[c for c in feats.columns if str(c).startswith("target_")])
    )
    keep = frame["date"].isin(dates[-days:])
    return frame.loc[keep].reset_index(drop=True)


# -- alerts -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    """A rule broken: ``rule`` (e.g. ``rank_ic_low``, ``psi``), ``subject`` (what it is about),
    ``value`` and the ``threshold`` it crossed."""

    rule: str
    subject: str
    value: float
    threshold: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.rule}: {self.subject} = {self.value:.4f} (threshold {self.threshold:.4f})"


def _subject(r: Mapping[Any, Any]) -> str:
    return f"{r['version']}/{r['arm']}/h{int(r['horizon'])}/{r['model']}"


def evaluate_alerts(
    config: MonitoringConfig,
    accuracy: pd.DataFrame | None = None,
    drift: pd.DataFrame | None = None,
    forecasts: pd.DataFrame | None = None,
    baselines: Mapping[tuple[str, str, int], float] | None = None,
) -> list[Alert]:
    """The alerts the tables raise under ``config``'s thresholds (a pure function):

    * per accuracy row with at least ``min_dates`` dates: ``rank_ic_low`` (Rank IC < ``min_rank_ic``;
      only with ``min_dates`` dates with a Rank IC), ``rank_ic_drop`` (more than ``max_rank_ic_drop``
      below the version's validation Rank IC in ``baselines``: ``(version, model, horizon) -> IC``),
      ``direction_low`` (directional accuracy < ``min_directional_accuracy``), ``coverage{L}_low``
      (coverage < L% - ``coverage_tolerance``);
    * per drift row: ``psi`` / ``ks`` (at or above ``psi_threshold`` / ``ks_threshold``), for the
      forecast distribution ``forecast_psi`` / ``forecast_ks``."""
    out: list[Alert] = []
    if accuracy is not None:
        covs = [c for c in accuracy.columns if c.startswith("coverage")]
        for r in accuracy.to_dict("records"):
            if r["dates"] < config.min_dates:
                continue
            s = _subject(r)
            ic = r["rank_ic"]
            if r["rank_ic_dates"] >= config.min_dates and np.isfinite(ic):
                if ic < config.min_rank_ic:
                    out.append(Alert("rank_ic_low", s, float(ic), config.min_rank_ic))
                base = (baselines or {}).get((str(r["version"]), str(r["model"]), int(r["horizon"])))
                if config.max_rank_ic_drop is not None and base is not None:
                    floor = base - config.max_rank_ic_drop
                    if ic < floor:
                        out.append(Alert("rank_ic_drop", s, float(ic), float(floor)))
            da = r["directional_accuracy"]
            if np.isfinite(da) and da < config.min_directional_accuracy:
                out.append(Alert("direction_low", s, float(da), config.min_directional_accuracy))
            for c in covs:
                v, floor = r[c], int(c[len("coverage") :]) / 100 - config.coverage_tolerance
                if np.isfinite(v) and v < floor:
                    out.append(Alert(f"{c}_low", s, float(v), float(floor)))
    for table, prefix in ((drift, ""), (forecasts, "forecast_")):
        if table is None:
            continue
        for r in table.to_dict("records"):
            subject = str(r["subject"]) if "version" not in r else f"{r['version']}/{r['subject']}"
            if np.isfinite(r["psi"]) and r["psi"] >= config.psi_threshold:
                out.append(Alert(f"{prefix}psi", subject, float(r["psi"]), config.psi_threshold))
            if np.isfinite(r["ks"]) and r["ks"] >= config.ks_threshold:
                out.append(Alert(f"{prefix}ks", subject, float(r["ks"]), config.ks_threshold))
    return out


def log_alerts(alerts: Sequence[Alert]) -> None:
    """One warning per alert (and one info line when there is none)."""
    for a in alerts:
        logger.warning("monitoring alert %s", a)
    if not alerts:
        logger.info("monitoring: no alert")


def training_reference(
    settings: Settings, frame: pd.DataFrame, features: Sequence[str], forecasts: pd.DataFrame | None = None
) -> dict[str, Any]:
    """:func:`build_drift_reference` with the ``monitoring`` section's bins and sample size (what
    jobs.train stores with a version as the extra ``drift_reference``)."""
    mc = settings.monitoring
    return build_drift_reference(
        frame, features, forecasts=forecasts, bins=mc.drift_bins, sample=mc.drift_sample
    )


def latest_report(directory: str | Path) -> tuple[str, dict[str, Any]] | None:
    """The newest report ``python -m jobs.monitor`` wrote into ``directory`` (``<as_of>.json``: the
    latest as-of date), as (path, report); None when there is none."""
    d = Path(directory)
    files = sorted(p for p in d.glob("*.json") if _ISO_DAY.fullmatch(p.stem)) if d.is_dir() else []
    if not files:
        return None
    return str(files[-1]), json.loads(files[-1].read_text())


def report_summary(path: str, report: Mapping[str, Any]) -> dict[str, Any]:
    """What ``/api/health`` shows of a monitoring report: its date and version, ``status``
    (``alerting`` when any alert fired, else ``ok``), the alerts, the rolling Rank IC per version, arm,
    horizon and model, and the input drift per feature."""
    alerts = list(report.get("alerts") or [])
    acc = ("version", "arm", "horizon", "model", "dates", "rank_ic", "directional_accuracy")
    return {
        "report": path,
        "as_of": report.get("as_of"),
        "version": report.get("version"),
        "status": "alerting" if alerts else "ok",
        "alerts": alerts,
        "rank_ic": [{k: r.get(k) for k in acc} for r in report.get("accuracy") or []],
        "drift": [
            {k: r.get(k) for k in ("subject", "psi", "ks", "drift")} for r in report.get("drift") or []
        ],
    }
