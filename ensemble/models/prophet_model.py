"""Prophet, fitted per ticker on the log close: trend + weekly/yearly seasonality.

Model
    One ``prophet.Prophet`` per ticker on ``y = log(close)`` (rows with a missing or non-positive
    close are left out), MAP fit (no MCMC), daily seasonality off, weekly and yearly seasonality
    ``'auto'`` by default (Prophet turns each on when the history covers it: two cycles; 1,000 trading
    days give both), ``uncertainty_samples=0`` (no trend simulation: the point forecast ``yhat`` is
    the same, the intervals are not computed). ``valid`` is not used (nothing to stop early).

Forecast
    ``pred_h(t) = yhat(t + h business days) - yhat(t)``: the change of the fitted trend + seasonality
    over the next h trading days, i.e. a forward log return. It uses the fitted model and the date t
    only, no realised price: the model is fitted once on the training period, so at every date after
    the training period the forecast uses only information dated <= t (training data ends before t).
    At dates inside the training period the forecast is in-sample, like every model's. Trading-day
    horizons map to calendar dates with ``pd.offsets.BDay`` (exchange holidays are ignored: a horizon
    spanning one reaches one trading day further).

Extra regressors (optional, ``regressors``: column names, default none)
    Each named column of the frame (point in time, e.g. the market's cumulative log return,
    :func:`market_log_level`) is added with ``add_regressor(mode="additive")``; training rows where
    one is missing are left out. Its future is unknown at t, so a forecast holds it at its value at
    t over the horizon (the only point-in-time choice); being additive, its term then cancels in
    ``yhat(t+h) - yhat(t)`` and the regressor acts through the fit: the trend and seasonality are
    what is left of the log price once its part is explained (with the market level: the ticker's
    own drift, net of its beta to the market). Prediction therefore needs no regressor values.

Failures
    A ticker with fewer than ``min_history`` usable rows, duplicate dates, or whose fit raises is
    recorded in ``failed_`` (ticker -> reason, logged as a warning) and skipped: its predictions are
    NaN, as are those of a ticker never seen at fit. No number is ever invented for it.

Speed: measured about 0.3 s (idle core) to 1 s (loaded core) per ticker at 1,000 days; most of it is
    the CmdStan optimiser in its own process. Prophet's ``iter`` default (10,000) is kept: a lower cap
    stops L-BFGS before convergence and changes the forecast. Distribution over tickers (Ray tasks
    over chunks) lives in the jobs layer; :meth:`ProphetForecaster.merge` joins the chunk models.

Artifacts: ``prophet_NNNNN.json`` per fitted ticker (``prophet.serialize.model_to_json``) + ``meta.json``
    (ticker -> file, failures, params). File names are generated, never taken from tickers (no path
    injection); on load each file's name must match the pattern and the file must start with ``{``.
"""

from __future__ import annotations

import logging
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import pandas as pd

from ensemble.config import DEFAULT_HORIZONS
from ensemble.models.base import KEY_COLUMNS, FitCallback, Forecaster, read_meta, write_meta
from ensemble.models.explain import check_magic

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
_FILE_RE = re.compile(r"^prophet_\d{5,}\.json$")
_QUIET_LOGGERS = ("cmdstanpy", "prophet", "prophet.models", "prophet.forecaster")

DEFAULTS: dict[str, Any] = {
    "min_history": 100,  # fewer usable rows: the ticker is not fitted (failed_)
    "max_history": None,  # fit on at most the last N rows of each ticker (None: all)
    "growth": "linear",
    "n_changepoints": 25,
    "changepoint_range": 0.8,
    "changepoint_prior_scale": 0.05,
    "seasonality_prior_scale": 10.0,
    "seasonality_mode": "additive",
    "weekly_seasonality": "auto",
    "yearly_seasonality": "auto",
    "regressors": [],  # extra regressor columns (see the module docstring), e.g. ["mkt_log_level"]
}

MARKET_LEVEL = "mkt_log_level"


def market_log_level(prices: pd.DataFrame) -> pd.DataFrame:
    """(date, ``mkt_log_level``): the cumulative log return of the equal-weighted universe.

    The daily return is :func:`ensemble.features.panel.market_log_return` (the market of the
    cross-sectional features, with its rule for invalid closes); the level is its running sum, 0 where
    a date has no return. Point in time: the value at t uses closes dated <= t only. An extra
    regressor for Prophet (``regressors: [mkt_log_level]``)."""
    from ensemble.features.panel import market_log_return  # lazy: the feature package loads TA-Lib

    daily = market_log_return(prices)
    return pd.DataFrame({"date": daily.index, MARKET_LEVEL: daily.fillna(0.0).cumsum().to_numpy()})


def _import_prophet() -> Any:
    # prophet logs an ERROR at import when plotly is missing; plotting is never used here.
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)
    import prophet

    return prophet


@contextmanager
def quiet_stan() -> Iterator[None]:
    """Silence cmdstanpy's / prophet's INFO chatter and prophet's own pandas deprecation warnings
    (prophet 1.5 on pandas 3) during fit / predict / load; logger levels are restored afterwards."""
    loggers = [logging.getLogger(n) for n in _QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"prophet\.")
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"prophet\.")
            yield
    finally:
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)


class ProphetForecaster(Forecaster):
    """One Prophet model per ticker; see the module docstring. Parameters: see ``DEFAULTS``."""

    name: ClassVar[str] = "prophet"
    per_ticker: ClassVar[bool] = True
    defaults: ClassVar[dict[str, Any]] = DEFAULTS

    @classmethod
    def param_names(cls) -> frozenset[str]:
        return frozenset(DEFAULTS)

    def __init__(self, horizons: Sequence[int] = DEFAULT_HORIZONS, **params: Any) -> None:
        unknown = sorted(set(params) - self.param_names())
        if unknown:
            raise TypeError(f"ProphetForecaster: unknown parameters {unknown}; known: {sorted(DEFAULTS)}")
        regs = params.get("regressors", [])
        if isinstance(regs, str) or not all(isinstance(r, str) and r for r in regs):
            raise TypeError(f"ProphetForecaster: regressors must be a list of column names, got {regs!r}")
        reserved = sorted(set(regs) & {"ds", "y", "date", "ticker", "close"})
        if reserved:
            raise ValueError(f"ProphetForecaster: {reserved} cannot be a regressor")
        if "regressors" in params:
            params["regressors"] = list(regs)
        super().__init__(horizons, **params)

    def resolved_params(self) -> dict[str, Any]:
        return {**DEFAULTS, **self.params}

    @property
    def regressors(self) -> list[str]:
        return list(self.resolved_params()["regressors"])

    def _new_model(self) -> Any:
        p = self.resolved_params()
        m = _import_prophet().Prophet(
            growth=p["growth"],
            n_changepoints=int(p["n_changepoints"]),
            changepoint_range=float(p["changepoint_range"]),
            changepoint_prior_scale=float(p["changepoint_prior_scale"]),
            seasonality_prior_scale=float(p["seasonality_prior_scale"]),
            seasonality_mode=p["seasonality_mode"],
            weekly_seasonality=p["weekly_seasonality"],
            yearly_seasonality=p["yearly_seasonality"],
            daily_seasonality=False,
            mcmc_samples=0,
            uncertainty_samples=0,
        )
        for r in p["regressors"]:
            m.add_regressor(r, mode="additive")
        return m

    # -- fit ----------------------------------------------------------------------------------------
    @property
    def tickers_(self) -> list[str]:
        """The tickers with a fitted model."""
        self._check_fitted("models_")
        return sorted(self.models_)

    def fit(
        self,
        train: pd.DataFrame,
        valid: pd.DataFrame | None = None,
        *,
        callbacks: Sequence[FitCallback] = (),
        refit_on: pd.DataFrame | None = None,
    ) -> Self:
        """One Prophet per ticker on its close history (``valid`` is not used). ``callbacks`` see
        the start and the end of the fit (Prophet's optimiser has no iterations to report)."""
        self._refuse_refit(refit_on)
        for cb in callbacks:
            cb.on_fit_start(self)
        missing = [c for c in ("date", "ticker", "close") if c not in train.columns]
        if missing:
            raise ValueError(
                f"{self.name}: training frame lacks column(s) {missing}; Prophet fits on 'close'"
            )
        p = self.resolved_params()
        regs = list(p["regressors"])
        missing = [c for c in regs if c not in train.columns]
        if missing:
            raise ValueError(
                f"{self.name}: training frame lacks regressor column(s) {missing} (params.regressors)"
            )
        min_history = int(p["min_history"])
        max_history = None if p["max_history"] is None else int(p["max_history"])
        models: dict[str, Any] = {}
        failed: dict[str, str] = {}
        seconds: dict[str, float] = {}
        _import_prophet()  # before quiet_stan(): importing prophet resets its loggers' levels
        t_all = time.perf_counter()
        with quiet_stan():
            for ticker, g in train.groupby("ticker", sort=True, observed=True):
                key = str(ticker)
                close = g["close"].to_numpy(dtype=np.float64, na_value=np.nan)
                usable = np.isfinite(close) & (close > 0)
                extra = {r: g[r].to_numpy(dtype=np.float64, na_value=np.nan) for r in regs}
                for x in extra.values():
                    usable &= np.isfinite(x)
                hist = pd.DataFrame(
                    {
                        "ds": pd.to_datetime(g["date"]).to_numpy()[usable],
                        "y": np.log(close[usable]),
                        **{r: x[usable] for r, x in extra.items()},
                    }
                )
                hist = hist.sort_values("ds", kind="stable").reset_index(drop=True)
                if hist["ds"].duplicated().any():
                    dup = hist.loc[hist["ds"].duplicated(), "ds"].iloc[0]
                    failed[key] = f"duplicate date {pd.Timestamp(dup).date()}"
                    logger.warning("%s: ticker %s not fitted: %s", self.name, key, failed[key])
                    continue
                if max_history is not None:
                    hist = hist.tail(max_history).reset_index(drop=True)
                if len(hist) < min_history:
                    what = "a positive close" + (" and every regressor" if regs else "")
                    failed[key] = f"{len(hist)} rows with {what} < min_history={min_history}"
                    logger.warning("%s: ticker %s not fitted: %s", self.name, key, failed[key])
                    continue
                t0 = time.perf_counter()
                try:
                    models[key] = self._new_model().fit(hist)
                except Exception as exc:  # one failing ticker is reported, not fatal
                    failed[key] = f"fit failed: {type(exc).__name__}: {exc}"
                    logger.warning("%s: ticker %s not fitted: %s", self.name, key, failed[key])
                    continue
                seconds[key] = time.perf_counter() - t0
        self.models_ = models
        self.failed_ = failed
        self.fit_seconds_ = seconds
        logger.info(
            "%s: fitted %d tickers (%d failed) in %.1f s (%.2f s per ticker)",
            self.name, len(models), len(failed), time.perf_counter() - t_all,
            float(np.mean(list(seconds.values()))) if seconds else float("nan"),
        )  # fmt: skip
        for cb in callbacks:
            cb.on_fit_end(self)
        return self

    @classmethod
    def merge(cls, parts: Sequence[ProphetForecaster]) -> ProphetForecaster:
        """Join forecasters fitted on disjoint ticker sets (e.g. one per Ray task) into one.

        All parts must share horizons and parameters; a ticker fitted in one part and failed in
        another stays fitted."""
        if not parts:
            raise ValueError("merge needs at least one fitted ProphetForecaster")
        first = parts[0]
        out = cls(horizons=first.horizons, **first.params)
        out.models_, out.failed_, out.fit_seconds_ = {}, {}, {}
        for part in parts:
            part._check_fitted("models_")
            if part.horizons != first.horizons or part.resolved_params() != first.resolved_params():
                raise ValueError("merge: parts differ in horizons or parameters")
            clash = sorted(set(part.models_) & set(out.models_))
            if clash:
                raise ValueError(f"merge: tickers fitted in more than one part: {clash[:10]}")
            out.models_.update(part.models_)
            out.failed_.update(part.failed_)
            out.fit_seconds_.update(part.fit_seconds_)
        for t in out.models_:
            out.failed_.pop(t, None)
        return out

    # -- predict --------------------------------------------------------------------------------------
    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        self._check_fitted("models_")
        missing = [c for c in KEY_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{self.name}: frame lacks column(s) {missing}")
        preds = np.full((len(frame), len(self.horizons)), np.nan)
        dates = pd.DatetimeIndex(pd.to_datetime(frame["date"]))
        tickers = frame["ticker"].astype(str).to_numpy()
        positions = pd.Series(np.arange(len(frame))).groupby(tickers, sort=True)
        with quiet_stan():
            for ticker, pos in positions:
                model = self.models_.get(str(ticker))
                if model is None:
                    continue  # never fitted or failed: NaN, never an invented number
                idx = pos.to_numpy()
                preds[idx] = self._forecast(model, dates[idx])
        return self._output(frame, preds)

    def _forecast(self, model: Any, dates: pd.DatetimeIndex) -> np.ndarray:
        """(len(dates), n_horizons) of yhat(t + h BDays) - yhat(t)."""
        targets = [dates + pd.offsets.BDay(h) for h in self.horizons]
        ds = dates.append(targets).unique().sort_values()
        # additive regressors held at their value at t cancel in the difference: any constant will do
        fut = pd.DataFrame({"ds": ds, **{r: 0.0 for r in model.extra_regressors}})
        yhat = pd.Series(model.predict(fut)["yhat"].to_numpy(dtype=np.float64), index=ds)
        base = yhat.reindex(dates).to_numpy()
        return np.column_stack([yhat.reindex(t).to_numpy() - base for t in targets])

    # -- persistence ----------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        from prophet.serialize import model_to_json

        self._check_fitted("models_")
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        files: dict[str, str] = {}
        for i, ticker in enumerate(sorted(self.models_)):
            files[ticker] = f"prophet_{i:05d}.json"
            (d / files[ticker]).write_text(model_to_json(self.models_[ticker]))
        write_meta(
            d,
            {
                "model": self.name,
                "format_version": FORMAT_VERSION,
                "horizons": list(self.horizons),
                "params": self.resolved_params(),
                "files": files,
                "failed": self.failed_,
                "fit_seconds": self.fit_seconds_,
            },
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        _import_prophet()
        from prophet.serialize import model_from_json

        d = Path(directory)
        meta = read_meta(d, cls.name)  # refuses pickles first
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{d}: unsupported {cls.name} format_version {meta.get('format_version')!r}")
        model = cls(horizons=tuple(meta["horizons"]), **meta["params"])
        models: dict[str, Any] = {}
        for ticker, fname in meta["files"].items():
            if not isinstance(fname, str) or not _FILE_RE.match(fname):
                raise ValueError(f"{d}: meta.json names an unexpected file {fname!r} for ticker {ticker!r}")
            path = d / fname
            check_magic(path, (b"{",))
            with quiet_stan():
                models[str(ticker)] = model_from_json(path.read_text())
        model.models_ = models
        model.failed_ = {str(k): str(v) for k, v in meta.get("failed", {}).items()}
        model.fit_seconds_ = {str(k): float(v) for k, v in meta.get("fit_seconds", {}).items()}
        return model
