"""Train-only preprocessing: feature selection, missing values and robust scaling.

:class:`Preprocessor` follows sklearn's conventions: ``__init__`` stores parameters, :meth:`fit`
learns everything from the **training rows only** (state ending in ``_``), :meth:`transform`
applies that state unchanged to any later frame.

* Importance (default ``method="rank_ic"``): the mean per-date Spearman rank correlation (Rank IC)
  between the feature and the target (default ``target_h5``) over the training dates, scored by
  its absolute value. A target counts only where it was already realised by the last training
  date (the last h rows of each ticker before the cutoff are purged: their labels would look past
  it). ``method="lgbm"`` scores by LightGBM split gain instead (deterministic, single thread), on
  the same rows, against the per-date rank of the target; nonlinear and interaction effects count.
  Both keep the rank IC columns in the report.
* Selection: the top ``k`` features by score among those with enough training coverage, skipping
  near-duplicates: a feature whose |Spearman| correlation with an already selected, higher-scored
  feature exceeds ``max_corr`` (0.95; None keeps duplicates) is left out (per-date ranks, z-scores
  and market-relative versions of one return carry the same cross-sectional ranking).
* Missing values: the training median of each selected feature (after scaling: 0).
* Scaling: ``sklearn.preprocessing.RobustScaler`` (median, interquartile range) fitted on the
  training rows, then clipped to +-``clip``; or, with ``cs_norm`` (``zscore``, ``rank``,
  ``rank_gauss``: :mod:`ensemble.features.normalize`), each date's values normalised against that
  date's other tickers (Qlib's CSZScoreNorm / CSRankNorm), missing values then 0 (the date's centre),
  clipped. Per date needs no fitted state and uses nothing but the date itself.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ensemble.backtest.metrics import ic_frame, ic_summary
from ensemble.features.catalog import CONTRACT_COLUMNS, catalogue
from ensemble.features.normalize import KINDS, Kind, per_date
from ensemble.features.panel import row_ranks
from ensemble.features.targets import feature_columns, realisation_dates, target_horizon

if TYPE_CHECKING:
    from sklearn.preprocessing import RobustScaler

logger = logging.getLogger(__name__)

Method = Literal["rank_ic", "lgbm"]
MIN_DATE_TICKERS = 3  # a training date counts in a feature's Rank IC from 3 tickers (the mean absorbs noise)


def _default_k() -> int:
    from ensemble.config import FeatureConfig

    return int(FeatureConfig().selection_k)


class Preprocessor:
    """Select, impute and scale features with state learnt on training rows only (see module doc)."""

    def __init__(
        self,
        k: int | None = None,
        *,
        target: str = "target_h5",
        method: Method = "rank_ic",
        clip: float | None = 10.0,
        min_coverage: float = 0.5,
        max_corr: float | None = 0.95,
        redundancy_rows: int = 20_000,
        lgbm_params: dict[str, Any] | None = None,
        cs_norm: Kind = "none",
    ) -> None:
        if cs_norm not in KINDS:
            raise ValueError(f"cs_norm must be one of {list(KINDS)}, got {cs_norm!r}")
        self.cs_norm = cs_norm
        self.k = k
        self.max_corr = max_corr
        self.redundancy_rows = redundancy_rows
        self.target = target
        self.method = method
        self.clip = clip
        self.min_coverage = min_coverage
        self.lgbm_params = lgbm_params

    # ------------------------------------------------------------------ fit
    def fit(
        self,
        frame: pd.DataFrame,
        train_end: str | pd.Timestamp | np.datetime64 | None = None,
        *,
        train_mask: np.ndarray | pd.Series | None = None,
    ) -> Preprocessor:
        """Learn selection, medians and scaling from the rows dated <= ``train_end`` (and/or ``train_mask``)."""
        from sklearn.preprocessing import RobustScaler

        if self.method not in ("rank_ic", "lgbm"):
            raise ValueError(f"method must be 'rank_ic' or 'lgbm', got {self.method!r}")
        h = target_horizon(self.target)
        if h is None or self.target not in frame.columns:
            raise ValueError(f"target column {self.target!r} (target_h<h>) not found in the frame")
        _check_sorted(frame)
        mask = _train_rows(frame, train_end, train_mask)
        if not mask.any():
            raise ValueError("no training rows: train_end / train_mask select nothing")
        dates = frame["date"].to_numpy(dtype="datetime64[ns]")
        self.train_end_ = pd.Timestamp(dates[mask].max())
        features = feature_columns(frame)
        if not features:
            raise ValueError("the frame has no feature columns")
        self.feature_names_in_ = features
        k = self.k if self.k is not None else _default_k()

        # Labels count only where realised by the last training date (purge the last h rows).
        known_by = realisation_dates(frame, h)
        y = frame[self.target].to_numpy(dtype=np.float64).copy()
        y[~(known_by <= np.datetime64(self.train_end_))] = np.nan
        label_rows = mask & np.isfinite(y)
        self.n_train_rows_ = int(mask.sum())
        self.n_label_rows_ = int(label_rows.sum())

        x_train = frame.loc[mask, features].to_numpy(dtype=np.float64)
        coverage = np.isfinite(x_train).mean(axis=0)
        table = ic_summary(ic_frame(frame, features, y, rows=label_rows, min_obs=MIN_DATE_TICKERS))
        table.insert(0, "coverage", coverage)
        if self.method == "lgbm":
            table.insert(0, "score", self._lgbm_gain(frame, features, y, label_rows))
        else:
            table.insert(0, "score", table["ic_mean"].abs())
        eligible = (table["coverage"] >= self.min_coverage) & np.isfinite(table["score"])
        ranked = table.assign(_name=table.index, _elig=eligible).sort_values(
            ["_elig", "score", "_name"], ascending=[False, False, True], kind="mergesort"
        )
        candidates = [str(f) for f in ranked.index[ranked["_elig"].to_numpy()]]
        selected, twin = self._select(frame, mask, candidates, k)
        if len(selected) < k:
            logger.info("selected %d features (k=%d): fewer are eligible and not redundant", len(selected), k)
        table["selected"] = table.index.isin(selected)
        table["redundant_with"] = [twin.get(str(f), "") for f in table.index]
        table["rank"] = pd.Series(np.arange(1, len(ranked) + 1), index=ranked.index).reindex(table.index)
        fam = {s.name: s.family for s in catalogue(CONTRACT_COLUMNS)}
        table.insert(0, "family", [fam.get(str(f), "") for f in table.index])
        table.index.name = "feature"
        self.scores_ = table.sort_values("rank", kind="mergesort")
        self.selected_ = selected

        sel_idx = [features.index(f) for f in selected]
        xs = x_train[:, sel_idx]
        with np.errstate(invalid="ignore"):
            med = (
                np.nanmedian(np.where(np.isfinite(xs), xs, np.nan), axis=0)
                if len(xs)
                else np.full(len(sel_idx), np.nan)
            )
        self.medians_ = pd.Series(np.where(np.isfinite(med), med, 0.0), index=selected, name="median")
        # NaNs are disregarded in fit: the centre is the training median, so an imputed value scales to 0
        self.scaler_: RobustScaler = RobustScaler(quantile_range=(25.0, 75.0)).fit(
            np.where(np.isfinite(xs), xs, np.nan)
        )
        logger.info(
            "preprocessor fitted on %d rows (<= %s, %d with realised %s): %d of %d features selected by %s",
            self.n_train_rows_,
            self.train_end_.date(),
            self.n_label_rows_,
            self.target,
            len(selected),
            len(features),
            self.method,
        )
        return self

    def _select(
        self, frame: pd.DataFrame, mask: np.ndarray, candidates: list[str], k: int
    ) -> tuple[list[str], dict[str, str]]:
        """Greedy top-k in score order, skipping a feature whose |Spearman| correlation with an
        already selected one exceeds ``max_corr`` (on an evenly spaced sample of training rows)."""
        if self.max_corr is None or len(candidates) <= 1:
            return candidates[:k], {}
        rows = np.flatnonzero(mask)
        rows = rows[:: max(1, len(rows) // self.redundancy_rows)]
        x = frame.iloc[rows][candidates].to_numpy(dtype=np.float64)
        ranks = row_ranks(x.T)  # rank each feature over the sampled rows
        centred = ranks - np.nanmean(ranks, axis=1, keepdims=True)
        centred = np.where(np.isfinite(centred), centred, 0.0)  # a missing value sits at the mean rank
        norm = np.sqrt((centred * centred).sum(axis=1))
        unit = centred / np.where(norm > 0, norm, 1.0)[:, None]
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):  # small product; BLAS threads only spin on a busy box
            corr_all = np.abs(unit @ unit.T)
        selected: list[int] = []
        twin: dict[str, str] = {}
        for i in range(len(candidates)):
            if len(selected) == k:
                break
            if selected:
                corr = corr_all[i, selected]
                j = int(np.argmax(corr))
                if corr[j] > self.max_corr:
                    twin[candidates[i]] = candidates[selected[j]]
                    continue
            selected.append(i)
        return [candidates[i] for i in selected], twin

    def _lgbm_gain(
        self, frame: pd.DataFrame, features: list[str], y: np.ndarray, rows: np.ndarray
    ) -> np.ndarray:
        import lightgbm as lgb

        sub = frame.loc[rows]
        y_rank = pd.Series(y[rows], index=sub.index).groupby(sub["date"].to_numpy()).rank(pct=True) - 0.5
        params: dict[str, Any] = {
            "n_estimators": 200,
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_child_samples": 200,
            "subsample": 0.8,
            "subsample_freq": 1,
            "colsample_bytree": 0.8,
            "importance_type": "gain",
            "deterministic": True,
            "force_row_wise": True,
            "n_jobs": 1,
            "random_state": 0,
            "verbose": -1,
        }
        params.update(self.lgbm_params or {})
        model = lgb.LGBMRegressor(**params)
        model.fit(sub[features].to_numpy(dtype=np.float32), y_rank.to_numpy(dtype=np.float64))
        gain = np.asarray(model.feature_importances_, dtype=np.float64)
        total = gain.sum()
        return gain / total if total > 0 else gain

    # ------------------------------------------------------------------ transform
    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Keys, the selected features (imputed, scaled, clipped; float32), and any target columns."""
        self._check_fitted()
        missing = [f for f in self.selected_ if f not in frame.columns]
        if missing:
            raise KeyError(f"frame lacks the selected features {missing[:5]} ({len(missing)} in all)")
        if self.cs_norm != "none":  # per date: nothing fitted is needed, nothing but the date is read
            z = per_date(frame, self.selected_, self.cs_norm).fillna(0.0).to_numpy()
        else:
            x = frame[self.selected_].to_numpy(dtype=np.float64)
            x = np.where(np.isfinite(x), x, self.medians_.to_numpy()[None, :])
            z = self.scaler_.transform(x)
        if self.clip is not None:
            z = np.clip(z, -self.clip, self.clip)
        out = pd.DataFrame(z.astype(np.float32), columns=self.selected_, index=frame.index)
        out.insert(0, "date", frame["date"].to_numpy())
        out.insert(1, "ticker", frame["ticker"].array)
        for c in frame.columns:
            if target_horizon(str(c)) is not None:
                out[c] = frame[c].to_numpy()
        return out

    def fit_transform(
        self,
        frame: pd.DataFrame,
        train_end: str | pd.Timestamp | np.datetime64 | None = None,
        *,
        train_mask: np.ndarray | pd.Series | None = None,
    ) -> pd.DataFrame:
        return self.fit(frame, train_end, train_mask=train_mask).transform(frame)

    def report(self, top: int | None = None) -> pd.DataFrame:
        """The importance table (every candidate feature, best first): family, score, coverage,
        the Rank IC summary on the training dates (``ic_summary``'s keys), selected, rank."""
        self._check_fitted()
        return self.scores_.head(top) if top else self.scores_.copy()

    # ------------------------------------------------------------------ persistence (JSON, never pickle)
    def to_dict(self) -> dict[str, Any]:
        """The fitted state as plain JSON types (for the model registry); :meth:`from_dict` restores it
        so that ``transform`` gives bit-identical output."""
        self._check_fitted()
        return {
            "params": {"k": self.k, "target": self.target, "method": self.method, "clip": self.clip,
                       "min_coverage": self.min_coverage, "max_corr": self.max_corr, "cs_norm": self.cs_norm},
            "train_end": self.train_end_.isoformat(),
            "selected": list(self.selected_),
            "medians": [float(v) for v in self.medians_.to_numpy()],
            "center": [float(v) for v in self.scaler_.center_],
            "scale": [float(v) for v in self.scaler_.scale_],
            "scores": {
                str(f): {"family": str(r["family"]), "score": float(r["score"]), "selected": bool(r["selected"])}
                for f, r in self.scores_.iterrows()
            },
        }  # fmt: skip

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> Preprocessor:
        from sklearn.preprocessing import RobustScaler

        self = cls(**state["params"])
        self.train_end_ = pd.Timestamp(state["train_end"])
        self.selected_ = [str(f) for f in state["selected"]]
        self.medians_ = pd.Series(
            np.asarray(state["medians"], dtype=np.float64), index=self.selected_, name="median"
        )
        scaler = RobustScaler(quantile_range=(25.0, 75.0))
        scaler.center_ = np.asarray(state["center"], dtype=np.float64)
        scaler.scale_ = np.asarray(state["scale"], dtype=np.float64)
        scaler.n_features_in_ = len(self.selected_)
        self.scaler_ = scaler
        scores = pd.DataFrame.from_dict(state.get("scores", {}), orient="index")
        scores.index.name = "feature"
        self.scores_ = scores
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "selected_"):
            raise RuntimeError("Preprocessor is not fitted: call fit(frame, train_end) first")


def _check_sorted(frame: pd.DataFrame) -> None:
    t = frame["ticker"].to_numpy(dtype=object)
    d = frame["date"].to_numpy(dtype="datetime64[ns]")
    if len(t) > 1:
        same = t[1:] == t[:-1]
        if ((t[1:] < t[:-1]) | (same & (d[1:] <= d[:-1]))).any():
            raise ValueError("the frame must be sorted by (ticker, date), as build_features returns it")


def _train_rows(
    frame: pd.DataFrame,
    train_end: str | pd.Timestamp | np.datetime64 | None,
    train_mask: np.ndarray | pd.Series | None,
) -> np.ndarray:
    if train_end is None and train_mask is None:
        raise ValueError("give train_end (last training date) or train_mask")
    mask = np.ones(len(frame), dtype=bool)
    if train_mask is not None:
        tm = np.asarray(train_mask, dtype=bool)
        if tm.shape != (len(frame),):
            raise ValueError(f"train_mask has shape {tm.shape}, expected ({len(frame)},)")
        mask &= tm
    if train_end is not None:
        mask &= frame["date"].to_numpy(dtype="datetime64[ns]") <= np.datetime64(pd.Timestamp(train_end))
    return mask
