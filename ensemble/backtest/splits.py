"""Date splits with purged labels: nothing a model is fitted on may look past its window's end.

A row's ``target_h{h}`` is realised h trading days after its date. :func:`purge_labels` blanks every
label not realised by a cut-off (the last h rows of each ticker before it), so a training window that
ends at ``train_end`` never sees a price after ``train_end``, and the validation window that follows
it shares no label with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ensemble.features.targets import realisation_dates, target_horizon


@dataclass(frozen=True)
class TrainValidSplit:
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    valid_start: pd.Timestamp
    valid_end: pd.Timestamp
    train_days: int
    valid_days: int

    def as_dict(self) -> dict[str, Any]:
        return {
            k: (v.date().isoformat() if isinstance(v, pd.Timestamp) else v) for k, v in asdict(self).items()
        }


def train_valid_split(
    dates: Any, *, training_days: int, valid_fraction: float, as_of: pd.Timestamp | str | None = None
) -> TrainValidSplit:
    """The most recent ``valid_fraction`` of the trading dates for validation, and the ``training_days``
    dates right before them for training (fewer if the data is shorter).

    ``as_of``: the last date whose information may be used (a walk-forward fold's cut-off, or a
    retraining date): only dates up to it are split, and :func:`window` then purges every label
    realised after it, so rows dated after ``as_of`` can be present in the data and change nothing."""
    udates = pd.DatetimeIndex(pd.unique(pd.to_datetime(np.asarray(dates)))).sort_values()
    if as_of is not None:
        udates = udates[udates <= pd.Timestamp(as_of)]
    n = len(udates)
    n_valid = max(1, int(round(n * valid_fraction)))
    n_train = min(int(training_days), n - n_valid)
    if n_train < 2:
        raise ValueError(
            f"train_valid_split: {n} trading dates leave {n_train} for training after {n_valid} validation "
            f"dates (valid_fraction={valid_fraction}); need more history"
        )
    first_valid = n - n_valid
    return TrainValidSplit(
        train_start=udates[first_valid - n_train],
        train_end=udates[first_valid - 1],
        valid_start=udates[first_valid],
        valid_end=udates[-1],
        train_days=n_train,
        valid_days=n_valid,
    )


def purge_labels(frame: pd.DataFrame, end: pd.Timestamp | str) -> pd.DataFrame:
    """A copy of ``frame`` (sorted by ticker, date) whose target columns are NaN where the label is
    realised after ``end``."""
    out = frame.copy()
    cut = np.datetime64(pd.Timestamp(end))
    for col in frame.columns:
        h = target_horizon(str(col))
        if h is None:
            continue
        known_by = realisation_dates(frame, h)
        col_values = out[col].to_numpy(dtype=np.float64, copy=True)
        col_values[~(known_by <= cut)] = np.nan
        out[col] = col_values
    return out


def window(frame: pd.DataFrame, start: pd.Timestamp | None, end: pd.Timestamp) -> pd.DataFrame:
    """Rows dated in [start, end] (start None: from the beginning), labels purged at ``end``."""
    d = frame["date"]
    mask = d <= end if start is None else (d >= start) & (d <= end)
    return purge_labels(frame.loc[mask].reset_index(drop=True), end)


def stopping_split(train: pd.DataFrame, fraction: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A training window's rows cut for a member's fit and for its early stopping (and tuning): the
    last ``fraction`` of its dates stop, the dates before them fit, with every fitting label realised
    on a stopping date purged (:func:`window`), so no fitting label looks into the stopping rows.

    ``train``: a training window, its labels already purged at its own end (:func:`window`), so the
    stopping rows' h-day labels cover their first dates only (``len(stop dates) - h`` of them).
    Nothing after the training window is read: the validation dates that follow stay out of sample
    for every member, for the ensemble's weights, its score calibration and its intervals to learn on."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"stopping_split: fraction must be in (0, 1), got {fraction}")
    udates = pd.DatetimeIndex(pd.unique(train["date"])).sort_values()
    n_stop = int(round(len(udates) * fraction))
    if n_stop < 1 or len(udates) - n_stop < 2:
        raise ValueError(
            f"stopping_split: {len(udates)} training dates leave {n_stop} early-stopping and "
            f"{len(udates) - n_stop} fitting dates (fraction {fraction}); need at least 1 and 2"
        )
    stop_start = udates[len(udates) - n_stop]
    fit = window(train, None, udates[len(udates) - n_stop - 1])
    stop = window(train, stop_start, udates[-1])  # already purged at the window's end: unchanged
    return fit, stop
