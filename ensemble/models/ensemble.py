"""The ensemble as a model: it learns from its members' validation forecasts (darts'
``RegressionEnsembleModel``, qlib's learn-time processors) and forecasts returns with intervals.

Inputs
    ``member_preds``: for each member, its ``predict`` output (date, ticker, ``pred_h{h}``) on the
    same dates. Members may learn different targets (raw or per-date returns, see
    :mod:`ensemble.features.normalize`) and so forecast on different scales: the ensemble only uses
    each member's **per-date z-score** (its ranking of the tickers of a date, in units of that date's
    spread). ``truth``: (date, ticker, ``target_h{h}`` realised forward log returns, ``ref_vol``
    each ticker's trailing daily volatility, :func:`trailing_volatility`).

Per horizon, :meth:`EnsembleForecaster.fit` learns on the validation dates (never later ones):

* **Weights** (``mode='learned'``): non-negative, summing to 1, by non-negative least squares of the
  per-date rank-gaussian realised return on the members' z-scores, with a ridge penalty pulling the
  weights toward the configured prior (``lambda * n * ||w - prior||^2``). ``lambda`` is chosen among
  ``lambdas`` (default :data:`LAMBDAS`; ``(0,)`` is plain non-negative least squares) on the
  validation dates themselves, honestly: weights fitted on the first half for each candidate (its
  labels that overlap the second half's purged, :func:`outside_block`: at h days, the first half's
  last h dates), scored by Rank IC on the second half; the largest lambda (closest to the prior) within one
  standard error of the best is kept (the one-standard-error rule, ``se_rule=1``; 0 keeps the best
  score, measured no better out of fold in docs/evidence.md; the error counts the horizon's
  overlapping labels, ``n_dates / h`` independent windows): on ~190 validation dates, weights moved
  off the prior on weaker evidence scored lower out of fold (bench/quality.py, synthetic and S&P;
  measured before the out-of-fold scores were purged). With fewer than :data:`MIN_WINDOWS`
  independent windows held out (long horizons on short validation windows) no error can be
  estimated, and the largest lambda is kept.
  Then refitted on all validation dates. Before that, the ``gate`` (default ``significant``) sets
  to 0 the prior weight of each member whose mean daily Rank IC on the dates the weights are fitted
  on is below 0 by more than one standard error (same error as above, without :data:`MIN_WINDOWS`:
  measured, that lowered an out-of-fold score; ``negative``: below 0 at all;
  ``none``: no gate), and renormalises; when every member would go, the prior is kept. Members
  with clearly wrong validation rankings (Prophet's trend on real prices) otherwise kept their
  prior weight, the rule finding no held-out reason to move. On the bench's saved member forecasts
  the purged out-of-fold validation scores (:meth:`cross_fit_predict`) neither support nor refute
  the gate (docs/evidence.md); it guards against a member that ranks clearly backwards on the whole
  validation window. The members whose prior was zeroed are ``excluded_`` per horizon.
  ``mode='fixed'``: the prior. A member that is missing (failed,
  or no forecast for a row) drops out and the others renormalise, row by row.
* **Calibration** to return units: the expected excess return over the universe is
  ``beta * score`` with ``beta = max(Rank IC, 1e-6) x spread(realised excess return) / spread(score)``
  on the validation dates (spreads: per-date standard deviations, averaged; Grinold's
  alpha = IC x volatility x score, robust to a few extreme returns, and never negative, so the
  calibration cannot reverse the ensemble's ranking); the expected return adds the universe's mean
  forward return. Each member gets its own ``beta`` too (:meth:`member_returns`).
* **Intervals**: split-conformal on the validation residuals, scaled by each ticker's trailing
  volatility (``ref_vol * sqrt(h)``): a volatile stock gets a wider interval. For level ``a`` the
  half-width is ``q_a * ref_vol * sqrt(h)``, ``q_a`` the ``ceil((n+1) a) / n`` quantile of
  ``|residual| / (ref_vol * sqrt(h))``. A residual is the ticker's own part (its realised return
  less the date's universe mean, less the forecast excess return) plus the universe's part (the
  date's universe mean less the expected one). The validation dates hold many independent own
  parts but few independent universe moves at long horizons (about 190 dates / 60 = 3 at h=60), so
  when ``history`` is given (the realised targets of every labelled date up to the fit's cutoff:
  training + validation, with ``ref_vol``), the universe's part is drawn from all of its dates
  instead, and the own parts of the dates before validation join the validation rows' (a
  dispersion measured over years, not one regime; there, without a forecast, the own part is the
  whole excess return, which the forecasts explain less than 1% of): each own part is paired with
  ``HISTORY_DRAWS`` universe deviations drawn (seeded) from the history, and the expected universe
  return is the history's mean.
* **Confidence** in [0, 1] per forecast: the skill-weighted share of the members that agree with the
  ensemble's sign (each member weighted by its ensemble weight x its positive validation Rank IC),
  times the share of the ensemble's weight that is present for the row.

State is plain JSON (:meth:`to_dict` / :meth:`from_dict`), stored in the registry version.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from ensemble.backtest.metrics import daily_rank_ic, overlap_se, rank_ic
from ensemble.backtest.splits import purge_labels
from ensemble.features.normalize import per_date
from ensemble.features.targets import target_horizon
from ensemble.models.base import KEY_COLUMNS, pred_col, target_col

logger = logging.getLogger(__name__)

VOL_COLUMN = "ref_vol"
LAMBDAS: tuple[float, ...] = (0.0, 0.01, 0.1, 1.0, 10.0, 100.0)
HISTORY_DRAWS = 8  # universe deviations paired with each validation row's own residual
MIN_WINDOWS = 2  # independent label windows (n_dates / h) a standard error needs: fewer, no evidence
FORMAT_VERSION = 1
Gate = Literal["none", "negative", "significant"]
GATES: tuple[str, ...] = get_args(Gate)


def trailing_volatility(prices: pd.DataFrame, window: int = 60, min_periods: int = 20) -> pd.DataFrame:
    """(date, ticker, ``ref_vol``): the standard deviation of each ticker's daily log returns over
    its last ``window`` rows up to and including the date (point in time)."""
    p = prices[["date", "ticker", "close"]].sort_values(["ticker", "date"])
    logc = np.log(p["close"].where(p["close"] > 0))
    r = logc.groupby(p["ticker"], sort=False).diff()
    vol = r.groupby(p["ticker"], sort=False).rolling(window, min_periods=min_periods).std()
    out = p[["date", "ticker"]].copy()
    out[VOL_COLUMN] = vol.reset_index(level=0, drop=True).reindex(p.index).to_numpy()
    return out.reset_index(drop=True)


def universe_means(history: pd.DataFrame, h: int) -> np.ndarray:
    """The universe's mean realised ``target_h{h}`` of each date of ``history`` with one (dates with
    no realised label left out), in date order."""
    col = target_col(h)
    if col not in history.columns:
        raise ValueError(f"ensemble history: no column {col!r}")
    y = history[["date", col]].dropna()
    y = y[np.isfinite(y[col].to_numpy(dtype=np.float64))]
    return y.groupby("date", sort=True)[col].mean().to_numpy(dtype=np.float64)


def _own_returns(history: pd.DataFrame, h: int, before: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each labelled row of ``history`` dated before ``before``: its realised ``target_h{h}`` less its
    date's universe mean, and its scale ``ref_vol * sqrt(h)`` (rows without either left out)."""
    hist = history[history["date"] < before]
    own = per_date(hist, [target_col(h)], "demean")[target_col(h)].to_numpy()
    scale = hist[VOL_COLUMN].to_numpy(dtype=np.float64) * math.sqrt(h)
    ok = np.isfinite(own) & np.isfinite(scale) & (scale > 0)
    return own[ok], scale[ok]


def outside_block(frame: pd.DataFrame, block: Any) -> pd.DataFrame:
    """``frame``'s rows dated outside ``block`` (consecutive trading dates held out), in their order
    and with their index, every label that overlaps a held-out label blanked, per horizon h (each
    ``target_h{h}`` column): the rows before the block purged at the last date before it
    (:func:`purge_labels`: labels realised inside the block), and the rows of the first h dates
    after it (labels that start inside the block's label windows)."""
    block = pd.to_datetime(np.asarray(block))
    d = pd.to_datetime(frame["date"]).to_numpy()
    keep = ~np.isin(d, block.to_numpy())
    out = frame.loc[keep].reset_index(drop=True)
    targets = {str(c): h for c in out.columns if (h := target_horizon(str(c))) is not None}
    if len(block) and targets and not out.empty:
        out[list(targets)] = out[list(targets)].astype(np.float64)
        d = d[keep]
        before = d < block.min().to_datetime64()
        if before.any():
            part = out.loc[before]  # a frame without tickers (one row per date) is one series
            part = part if "ticker" in part.columns else part.assign(ticker="")
            part = part.sort_values(["ticker", "date"], kind="stable")
            out.loc[part.index, list(targets)] = purge_labels(part, d[before].max())[list(targets)]
        after = d > block.max().to_datetime64()
        later = np.unique(d[after])
        for col, h in targets.items():
            out.loc[after & np.isin(d, later[:h]), col] = np.nan
    return out.set_axis(frame.index[keep])


def _zscores(member_preds: Mapping[str, pd.DataFrame], keys: pd.DataFrame, h: int) -> np.ndarray:
    """(rows of ``keys``, members) per-date z-scores of each member's forecast; NaN where missing."""
    cols = []
    for p in member_preds.values():
        a = keys.merge(p[[*KEY_COLUMNS, pred_col(h)]], on=list(KEY_COLUMNS), how="left")
        cols.append(per_date(a, [pred_col(h)], "zscore")[pred_col(h)].to_numpy())
    return np.column_stack(cols) if cols else np.zeros((len(keys), 0))


def _combine(z: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-renormalised weighted mean over the finite members, and the weight share present."""
    ok = np.isfinite(z)
    wsum = (ok * w).sum(axis=1)
    num = np.where(ok, z, 0.0) @ w
    with np.errstate(invalid="ignore", divide="ignore"):
        score = np.where(wsum > 0, num / wsum, np.nan)
    return score, wsum / max(float(w.sum()), 1e-12)


def _fit_weights(z: np.ndarray, y: np.ndarray, prior: np.ndarray, lam: float) -> np.ndarray:
    ok = np.isfinite(y)
    x = np.where(np.isfinite(z[ok]), z[ok], 0.0)
    n = max(len(x), 1)
    a = np.vstack([x, math.sqrt(lam * n) * np.eye(len(prior))])
    b = np.concatenate([y[ok], math.sqrt(lam * n) * prior])
    w, _ = nnls(a, b)
    return w / w.sum() if w.sum() > 0 else prior.copy()


class EnsembleForecaster:
    """See the module docstring. ``prior``: the configured weights (member -> weight)."""

    def __init__(
        self,
        prior: Mapping[str, float],
        horizons: Sequence[int],
        *,
        mode: Literal["learned", "fixed"] = "learned",
        levels: Sequence[float] = (0.8, 0.95),
        lambdas: Sequence[float] = LAMBDAS,
        gate: Gate = "significant",
        se_rule: float = 1.0,
    ) -> None:
        if mode not in ("learned", "fixed"):
            raise ValueError(f"ensemble mode must be 'learned' or 'fixed', got {mode!r}")
        if gate not in GATES:
            raise ValueError(f"ensemble gate must be one of {list(GATES)}, got {gate!r}")
        if any(not 0 < a < 1 for a in levels):
            raise ValueError(f"interval levels must lie in (0, 1), got {list(levels)}")
        if not lambdas or any(not (lam >= 0 and math.isfinite(lam)) for lam in lambdas):
            raise ValueError(f"ensemble lambdas must be finite and >= 0, got {list(lambdas)}")
        if not (se_rule >= 0 and math.isfinite(se_rule)):
            raise ValueError(f"ensemble se_rule must be finite and >= 0, got {se_rule!r}")
        self.prior = {k: float(v) for k, v in prior.items()}
        self.horizons = tuple(int(h) for h in horizons)
        self.mode = mode
        self.levels = tuple(float(a) for a in levels)
        self.lambdas = tuple(float(lam) for lam in lambdas)
        self.gate = gate
        self.se_rule = float(se_rule)

    # ------------------------------------------------------------------------------------------- fit
    def fit(
        self,
        member_preds: Mapping[str, pd.DataFrame],
        truth: pd.DataFrame,
        history: pd.DataFrame | None = None,
    ) -> EnsembleForecaster:
        """Learn on ``truth``'s (validation) dates. ``history``: optional (date, ticker?,
        ``target_h{h}``) realised forward returns of every labelled date up to the cutoff (the
        training and validation rows; NaN where not yet realised): the universe's expected return
        and the universe part of the intervals come from all of its dates (module docstring)."""
        members = [m for m in member_preds if self.prior.get(m, 0.0) > 0]
        if not members:
            raise ValueError(f"ensemble: no member with a positive prior weight among {sorted(member_preds)}")
        preds = {m: member_preds[m] for m in members}
        keys = truth[list(KEY_COLUMNS)].reset_index(drop=True)
        prior = np.array([self.prior[m] for m in members])
        prior = prior / prior.sum()
        dates = keys["date"].to_numpy()
        udates = np.unique(dates)
        mid = udates[max(0, len(udates) // 2 - 1)]
        first_half = dates <= mid
        # the first half's rows with every label that overlaps the second half's blanked
        first_part = outside_block(truth.reset_index(drop=True), udates[udates > mid])
        vol = truth[VOL_COLUMN].to_numpy(dtype=np.float64)
        self.members_ = members
        self.weights_: dict[int, list[float]] = {}
        self.lambda_: dict[int, float | None] = {}
        self.beta_: dict[int, float] = {}
        self.member_beta_: dict[int, dict[str, float]] = {}
        self.market_: dict[int, float] = {}
        self.quantiles_: dict[int, dict[str, float]] = {}
        self.skill_: dict[int, dict[str, float]] = {}
        self.n_valid_: dict[int, int] = {}
        self.usable_: dict[int, bool] = {}
        self.excluded_: dict[int, list[str]] = {}
        for h in self.horizons:
            y_raw = truth[target_col(h)].to_numpy(dtype=np.float64)
            z = _zscores(preds, keys, h)
            labelled = np.isfinite(y_raw) & np.isfinite(vol) & np.isfinite(z).any(axis=1)
            if len(np.unique(dates[labelled])) < 2:  # nothing to learn from: this horizon forecasts NaN
                logger.warning(
                    "ensemble: fewer than 2 validation dates with h=%d labels: no forecast at h=%d", h, h
                )
                self.usable_[h], self.excluded_[h] = False, []
                self.weights_[h], self.lambda_[h], self.beta_[h] = [float(v) for v in prior], None, 0.0
                self.member_beta_[h] = dict.fromkeys(members, 0.0)
                self.market_[h], self.skill_[h], self.n_valid_[h] = 0.0, dict.fromkeys(members, 0.0), 0
                self.quantiles_[h] = {_level_key(a): 0.0 for a in self.levels}
                continue
            self.usable_[h] = True
            frame_y = keys.assign(y=y_raw)
            y_rg = per_date(frame_y, ["y"], "rank_gauss")["y"].to_numpy()
            y_dm = per_date(frame_y, ["y"], "demean")["y"].to_numpy()
            self.skill_[h] = {m: rank_ic(dates, z[:, j], y_raw) for j, m in enumerate(members)}
            if self.mode == "learned" and len(members) > 1:
                daily = {}
                y_first = first_part[target_col(h)].to_numpy(dtype=np.float64)  # purged at the halves
                y_rg_first = per_date(first_part, [target_col(h)], "rank_gauss")[target_col(h)].to_numpy()
                prior_first = _gated_prior(prior, dates[first_half], z[first_half], y_first, h, self.gate)
                for lam in self.lambdas:
                    w = _fit_weights(z[first_half], y_rg_first, prior_first, lam)
                    s, _ = _combine(z[~first_half], w)
                    daily[lam] = daily_rank_ic(dates[~first_half], s, y_raw[~first_half])
                lam = _one_se_choice(daily, h, self.se_rule)
                prior_h = _gated_prior(prior, dates, z, y_raw, h, self.gate)
                w = _fit_weights(z, y_rg, prior_h, lam)
                self.excluded_[h] = [
                    m for m, p, q in zip(members, prior, prior_h, strict=True) if p > 0 and q == 0
                ]
                self.lambda_[h] = lam
            else:
                w = prior.copy()
                self.lambda_[h] = None
                self.excluded_[h] = []
            self.weights_[h] = [float(v) for v in w]
            score, _ = _combine(z, w)
            self.beta_[h] = _calibration_slope(dates, score, y_dm)
            self.member_beta_[h] = {
                m: _calibration_slope(dates, z[:, j], y_dm) for j, m in enumerate(members)
            }
            ok = np.isfinite(y_raw)
            hist_mean = universe_means(history, h) if history is not None else np.zeros(0)
            if history is not None and hist_mean.size >= 2:  # the universe's moves of every labelled date
                self.market_[h] = float(hist_mean.mean())
            else:
                self.market_[h] = (
                    float(pd.Series(y_raw[ok]).groupby(dates[ok]).mean().mean()) if ok.any() else 0.0
                )
            excess = self.beta_[h] * np.where(np.isfinite(score), score, 0.0)
            scale = vol * math.sqrt(h)
            if history is not None and hist_mean.size >= 2:  # own parts + universe parts from the history
                own = y_dm - excess
                keep = np.isfinite(own) & np.isfinite(scale) & (scale > 0) & np.isfinite(score)
                own_r, own_scale = own[keep], scale[keep]
                if VOL_COLUMN in history.columns:  # + the own parts of the dates before validation
                    more_r, more_scale = _own_returns(history, h, before=udates[0])
                    own_r, own_scale = (
                        np.concatenate([own_r, more_r]),
                        np.concatenate([own_scale, more_scale]),
                    )
                draws = np.random.default_rng(h).choice(
                    hist_mean - self.market_[h], size=(own_r.size, HISTORY_DRAWS)
                )
                nc = (np.abs(own_r[:, None] + draws) / own_scale[:, None]).ravel()
            else:
                nc = np.abs(y_raw - (self.market_[h] + excess)) / scale
                nc = nc[np.isfinite(nc) & np.isfinite(score)]
            self.n_valid_[h] = int(nc.size)
            if nc.size == 0:
                raise ValueError(
                    f"ensemble: no validation row with a forecast, a target and ref_vol at h={h}"
                )
            self.quantiles_[h] = {_level_key(a): _conformal_quantile(nc, a) for a in self.levels}
        return self

    # --------------------------------------------------------------------------------------- predict
    def _check_fitted(self) -> None:
        if not hasattr(self, "weights_"):
            raise RuntimeError("EnsembleForecaster: call fit() (or from_dict) before predict()")

    def weights(self, h: int) -> dict[str, float]:
        self._check_fitted()
        return dict(zip(self.members_, self.weights_[h], strict=True))

    def predict(self, member_preds: Mapping[str, pd.DataFrame], frame: pd.DataFrame) -> pd.DataFrame:
        """Per (date, ticker) of ``frame`` (which carries ``ref_vol``): ``pred_h{h}`` (expected log
        return), ``excess_h{h}`` (over the universe), ``lo{L}_h{h}`` / ``hi{L}_h{h}`` per interval level
        (e.g. lo80 / hi80), ``confidence_h{h}``, ``n_models_h{h}``. Rows no member forecasts stay NaN."""
        self._check_fitted()
        present = {m: member_preds[m] for m in self.members_ if m in member_preds}
        keys = frame[list(KEY_COLUMNS)].reset_index(drop=True)
        out = keys.copy()
        vol = (
            frame[VOL_COLUMN].to_numpy(dtype=np.float64)
            if VOL_COLUMN in frame
            else np.full(len(keys), np.nan)
        )
        idx = [self.members_.index(m) for m in present]
        for h in self.horizons:
            w_all = np.asarray(self.weights_[h])
            z = _zscores(present, keys, h) if present else np.full((len(keys), 0), np.nan)
            w = w_all[idx] if idx else np.zeros(0)
            score, share = _combine(z, w) if idx else (np.full(len(keys), np.nan), np.zeros(len(keys)))
            share = share * (w.sum() / max(w_all.sum(), 1e-12)) if idx else share
            if not self.usable_[h]:
                score = np.full(len(keys), np.nan)
            excess = self.beta_[h] * score
            out[pred_col(h)] = self.market_[h] + excess
            out[f"excess_h{h}"] = excess
            half = vol * math.sqrt(h)
            for a in self.levels:
                q = self.quantiles_[h][_level_key(a)]
                out[f"lo{_level_key(a)}_h{h}"] = out[pred_col(h)] - q * half
                out[f"hi{_level_key(a)}_h{h}"] = out[pred_col(h)] + q * half
            skill = np.array([max(self.skill_[h].get(m, 0.0), 0.0) + 1e-6 for m in present]) * w
            ok = np.isfinite(z)
            agree = ok & (np.sign(np.where(ok, z, 0.0)) == np.sign(score)[:, None])
            denom = (ok * skill).sum(axis=1)
            with np.errstate(invalid="ignore", divide="ignore"):
                conf = np.where(denom > 0, (agree * skill).sum(axis=1) / denom, np.nan) * share
            out[f"confidence_h{h}"] = np.where(np.isfinite(score), conf, np.nan)
            out[f"n_models_h{h}"] = ok.sum(axis=1)
        return out

    def member_returns(self, name: str, preds: pd.DataFrame) -> pd.DataFrame:
        """A member's forecast in return units (its own calibration): keys and ``pred_h{h}``."""
        self._check_fitted()
        if name not in self.members_:
            raise KeyError(f"ensemble: {name!r} is not a member; members: {self.members_}")
        out = preds[list(KEY_COLUMNS)].reset_index(drop=True)
        for h in self.horizons:
            z = per_date(preds.reset_index(drop=True), [pred_col(h)], "zscore")[pred_col(h)].to_numpy()
            out[pred_col(h)] = self.market_[h] + self.member_beta_[h][name] * z
        return out

    def cross_fit_predict(
        self,
        member_preds: Mapping[str, pd.DataFrame],
        truth: pd.DataFrame,
        folds: int = 2,
        history: pd.DataFrame | None = None,
    ) -> pd.DataFrame:
        """Out-of-fold forecasts on ``truth``'s dates: the dates split into ``folds`` consecutive
        blocks, each predicted by an ensemble (same settings) fitted on the other blocks (and on
        ``history`` less the block's dates), every label that overlaps one of the block's purged
        (:func:`outside_block`, in ``truth`` and ``history``): a validation score for a model that
        learns on the validation dates, honest about the ensemble's own learning (the training path
        keeps the members' own early stopping and tuning off these dates, ``training.
        early_stopping_fraction``; with it at 0 the members have seen every block's labels). A
        block whose fold is left with fewer than 2 labelled dates at h (at long horizons on short
        validation windows) has no forecast (NaN) at h: no out-of-fold evidence there."""
        dates = truth["date"].to_numpy()
        blocks = np.array_split(np.unique(dates), folds)
        parts = []
        for block in blocks:
            held = np.isin(dates, block)
            rest = outside_block(truth, block)
            fold = EnsembleForecaster(
                self.prior,
                self.horizons,
                mode=self.mode,
                levels=self.levels,
                lambdas=self.lambdas,
                gate=self.gate,
                se_rule=self.se_rule,
            )
            fold.fit(
                {m: p[~np.isin(p["date"].to_numpy(), block)] for m, p in member_preds.items()},
                rest,
                history=None if history is None else outside_block(history, block),
            )
            test = truth.loc[held].reset_index(drop=True)
            parts.append(
                fold.predict(
                    {m: p[np.isin(p["date"].to_numpy(), block)] for m, p in member_preds.items()}, test
                )
            )
        return pd.concat(parts, ignore_index=True)

    # ----------------------------------------------------------------------------------- persistence
    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        hs = [str(h) for h in self.horizons]
        return {
            "format_version": FORMAT_VERSION,
            "prior": self.prior,
            "horizons": list(self.horizons),
            "mode": self.mode,
            "levels": list(self.levels),
            "lambdas": list(self.lambdas),
            "gate": self.gate,
            "se_rule": self.se_rule,
            "members": list(self.members_),
            "weights": {k: self.weights_[int(k)] for k in hs},
            "lambda": {k: self.lambda_[int(k)] for k in hs},
            "beta": {k: self.beta_[int(k)] for k in hs},
            "member_beta": {k: self.member_beta_[int(k)] for k in hs},
            "market": {k: self.market_[int(k)] for k in hs},
            "quantiles": {k: self.quantiles_[int(k)] for k in hs},
            "skill": {k: self.skill_[int(k)] for k in hs},
            "n_valid": {k: self.n_valid_[int(k)] for k in hs},
            "usable": {k: self.usable_[int(k)] for k in hs},
            "excluded": {k: self.excluded_[int(k)] for k in hs},
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> EnsembleForecaster:
        if state.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"ensemble state: unsupported format_version {state.get('format_version')!r}")
        self = cls(
            state["prior"],
            state["horizons"],
            mode=state["mode"],
            levels=state["levels"],
            lambdas=state.get("lambdas", LAMBDAS),
            gate=state.get("gate", "none"),
            se_rule=state.get("se_rule", 1.0),
        )
        self.members_ = [str(m) for m in state["members"]]

        def per_h(key: str) -> dict[int, Any]:
            return {int(k): v for k, v in state[key].items()}

        self.weights_ = {h: [float(x) for x in v] for h, v in per_h("weights").items()}
        self.lambda_ = per_h("lambda")
        self.beta_ = {h: float(v) for h, v in per_h("beta").items()}
        self.member_beta_ = per_h("member_beta")
        self.market_ = {h: float(v) for h, v in per_h("market").items()}
        self.quantiles_ = per_h("quantiles")
        self.skill_ = per_h("skill")
        self.n_valid_ = per_h("n_valid")
        self.usable_ = {h: bool(v) for h, v in per_h("usable").items()}
        excluded = state.get("excluded", {})  # absent from states saved before the gate
        self.excluded_ = {h: [str(m) for m in excluded.get(str(h), [])] for h in self.horizons}
        for h in self.horizons:
            w = np.asarray(self.weights_[h])
            if (
                len(w) != len(self.members_)
                or (w < 0).any()
                or not math.isclose(float(w.sum()), 1.0, abs_tol=1e-9)
            ):
                raise ValueError(
                    f"ensemble state: weights at h={h} must be {len(self.members_)} non-negative numbers summing to 1"
                )
        return self


def _level_key(a: float) -> str:
    return f"{round(a * 100):d}"


def _one_se_choice(daily: Mapping[float, pd.Series], h: int, se_rule: float = 1.0) -> float:
    """The largest ``lambda`` (closest to the prior) whose held-out mean Rank IC is within ``se_rule``
    standard errors of the best one's (the one-standard-error rule at 1; 0: the best score). The
    error of a difference of mean daily ICs counts the horizon's overlapping labels: ``n_dates / h``
    independent windows. With fewer than :data:`MIN_WINDOWS` of them held out (the second half of
    ~190 validation dates at h=60: ~35 labelled dates, 0.6 of a window) no error can be estimated and
    nothing supports moving off the prior: the largest ``lambda`` is kept, whatever ``se_rule``."""
    if max((len(v.dropna()) for v in daily.values()), default=0) / h < MIN_WINDOWS:
        return max(daily)  # no estimable error on fewer than MIN_WINDOWS windows: the prior-most
    means = {lam: float(v.mean()) if len(v) else -np.inf for lam, v in daily.items()}
    best = max(means, key=lambda lam: (means[lam], lam))
    chosen = best
    for lam in sorted(daily):
        if lam <= best:
            continue
        diff = (daily[lam] - daily[best]).dropna()
        if len(diff) < 2:
            continue
        if means[lam] >= means[best] - se_rule * overlap_se(diff, h):
            chosen = lam
    return chosen


def _gated_prior(
    prior: np.ndarray, dates: np.ndarray, z: np.ndarray, y: np.ndarray, h: int, gate: str
) -> np.ndarray:
    """The prior with the weight of each member the ``gate`` excludes set to 0, renormalised (the
    prior unchanged when it would exclude every member). ``negative``: a member whose mean daily Rank
    IC on these dates is <= 0; ``significant``: one whose mean is below 0 by more than one standard
    error (counting the horizon's overlapping labels: ``n_dates / h`` independent windows)."""
    if gate == "none":
        return prior
    keep = np.ones(len(prior), dtype=bool)
    for j in range(len(prior)):
        daily = daily_rank_ic(dates, z[:, j], y)
        if len(daily) < 2:
            continue
        se = overlap_se(daily, h) if gate == "significant" else 0.0
        keep[j] = float(daily.mean()) + se > 0
    w = prior * keep
    return w / w.sum() if w.sum() > 0 else prior


def _per_date_std(dates: np.ndarray, x: np.ndarray) -> float:
    ok = np.isfinite(x)
    sd = pd.Series(x[ok]).groupby(dates[ok]).std().dropna()
    return float(sd.mean()) if len(sd) else 0.0


def _calibration_slope(dates: np.ndarray, score: np.ndarray, y_dm: np.ndarray) -> float:
    """Expected excess return per unit of ``score``: Rank IC x the per-date spread of the realised
    excess return / the per-date spread of the score (Grinold's alpha = IC x volatility x score),
    robust where a least-squares slope follows a few extreme returns. Never below a tiny positive
    number: a score without validation skill forecasts (almost) no excess return, and never has its
    ranking turned upside down."""
    sd_y, sd_s = _per_date_std(dates, y_dm), _per_date_std(dates, score)
    if not (sd_y > 0 and sd_s > 0):
        return 0.0
    ic = rank_ic(dates, score, y_dm)
    return max(ic, 1e-6) * sd_y / sd_s


def _conformal_quantile(scores: np.ndarray, level: float) -> float:
    """The split-conformal quantile: the ceil((n+1) level)-th smallest score (inf if n is too small)."""
    n = len(scores)
    k = math.ceil((n + 1) * level)
    if k > n:
        return float("inf")
    return float(np.sort(scores)[k - 1])
