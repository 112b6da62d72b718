"""Out-of-sample forecast quality of the six models, beside the oracle and simple baselines.

Two data sets, or a file of your own, one run each (``--source`` or ``--data``):

* ``synthetic`` (default): the synthetic market (500 tickers x 1,260 days, seed 7). Fixed dates: the
  first 60% train, the next 15% validate (the ensembles learn there), the last 25% test; every label realised
  after the end of its window is purged (no training label looks into validation, no validation
  label into the test). The oracle ``E[log(close[t+h]/close[t]) | information at t]`` written by the
  generator is scored on the same test rows: the ceiling.
* ``sp500``: the real S&P 500 sample in ../shared/data (505 tickers, 2013-02..2018-02, cleaned with
  ``schema.clean(mode="repair")``, GICS sectors joined; no fundamentals or sentiment). Train on the
  first 70% of the dates (its last 15% validate, purged), test on the rest; every training label
  realised after the 70% cut is purged. There is no oracle for real data.
* ``--data PATH`` (instead of ``--source``): a price file of your own, Parquet or CSV in the data
  contract's columns (``--sectors PATH`` a ticker,sector CSV; ``--clean``, default ``repair`` as the
  S&P sample is cleaned, ``none`` refuses a file that breaks the contract), split as the S&P sample
  is; no oracle. Results go to ``artifacts/bench/quality_file_<the file's name>.json``
  (``quality_file_prices.parquet.json``). ``--save-preds`` folders record their data (``source.json``),
  and ``--from-preds`` refuses a folder written from other data.

On both, the members that stop early (the boosters and the sequence models) stop on the last
``--early-stopping-fraction`` of the training dates (default ``training.early_stopping_fraction``,
labels purged between, ``ensemble.backtest.splits.stopping_split``) and fit on the dates before,
as every training path fits them; the others fit the whole training window. So no member has seen a
validation label (``0``: they stop on the validation dates, as before 2026-12). The boosters are then
fitted again on the whole training window for the rounds they stopped at (``--refit-after-stopping
MODEL ...``, default ``training.refit_after_stopping``; the sequence models can be named too).

Features: the whole pipeline (``build_features``), then a ``Preprocessor`` (top ``k`` by training
Rank IC, robust scaling) fitted on the training dates only. Each model is fitted once with its
module's ``DEFAULTS`` (no tuning, and nothing is chosen on the test period), then predicts the test
dates (the sequence models read the ``seq_len`` days before the first test date as history).
``--tune-trials N``: the tree models named by ``--tuned-models`` (default
``training.tuned_models``, the forest) are tuned instead, as ``jobs.train`` tunes them (N Ray Tune
trials on a private local Ray, fitted on the training dates before the stopping tail and scored on
it, the best configuration fitted as above); the others fit their ``DEFAULTS``, as there.
Prophet is fitted per ticker in ``--prophet-procs`` processes (the per-ticker seconds are in-process
fit times).

Prophet's forecasts are made the way the platform makes them
(:func:`ensemble.scoring.per_ticker_walk_forward`): from the one fit through the training end, each
ticker's model is refitted on the last ``training.training_days`` dates up to a date once it is
more than N dates stale. On the validation dates N is ``--prophet-valid-refit-every`` (default
``training.prophet_valid_refit_every_days``, as ``jobs.train`` validates it; the ensemble fits its
weights on them); on the test dates ``--prophet-refit-every`` (default
``scoring.prophet_refit_every_days``, as ``jobs.score`` serves it). The one fit's test forecasts,
up to two years stale, are kept as the row ``prophet_fit_once`` (out of the ensemble);
``--prophet-refit-every 0`` makes them the member's test forecasts instead.

Baselines, from prices only: 5-day reversal ``-log(close[t]/close[t-5])`` and 12-1 momentum
``log(close[t-21]/close[t-252])``. Two ensembles over the models that ran: the learned one
(``ensemble.models.ensemble.EnsembleForecaster`` fitted on the validation dates) and the same with
the configured weights (``mode='fixed'``); the learned one's interval coverage on the test dates
is printed, and every row is also scored on the validation dates (the ensembles out of fold), the
figures defaults are chosen by. ``ensemble_ceiling`` is a diagnostic, never a forecast: the same
ensemble with its weights fitted by plain non-negative least squares on the test dates themselves,
the most any weighting of these members' forecasts could have reached on them; and a line gives
the learned ensemble's Rank IC less the best member's, per horizon.

``--shift-back N`` moves the training end and the validation window N trading dates earlier (the
training start stays, so the members fit fewer dates) and starts the test period the day after the
moved validation window: with N the validation window's length, its ``--save-preds`` folder holds
the members' held-out forecasts of the window before the default one (for bench/earlier_origin.py),
and its test figures cover the default validation window too, comparable to no other run's.

Printed per row and horizon: the mean of the per-date Spearman correlations between forecast and
realised forward log return on the test dates (Rank IC), its ICIR (mean / std over dates), and the
fit seconds; then the best model's 5-day Rank IC as a share of the oracle's.

Usage: ``.venv/bin/python bench/quality.py [--source synthetic|sp500 | --data PATH] [--models xgboost lightgbm ...]``
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ensemble.backtest.evaluation import baseline_forecasts  # noqa: E402
from ensemble.backtest.metrics import ic_summary, interval_coverage, rank_ic_by_date  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.cli import run_main  # noqa: E402
from ensemble.config import (  # noqa: E402
    DEFAULT_HORIZONS,
    MODEL_NAMES,
    ConfigError,
    EnsembleConfig,
    FeatureConfig,
    ScoringConfig,
    Settings,
    SyntheticConfig,
    TrainingConfig,
    load_settings,
)
from ensemble.data.files import CSV_SUFFIXES, PARQUET_SUFFIXES  # noqa: E402
from ensemble.features import Preprocessor, build_features  # noqa: E402
from ensemble.features.normalize import KINDS, cross_sectional_targets  # noqa: E402
from ensemble.models import create_model  # noqa: E402
from ensemble.models.ensemble import VOL_COLUMN, EnsembleForecaster, trailing_volatility  # noqa: E402
from ensemble.models.prophet_model import ProphetForecaster  # noqa: E402
from ensemble.scoring import per_ticker_walk_forward  # noqa: E402
from ensemble.training import fit_rows, member_windows, refit_members, tuned_members  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
HORIZONS = tuple(DEFAULT_HORIZONS)
logger = logging.getLogger("bench.quality")


# -- data and splits --------------------------------------------------------------------------------
SOURCES = ("synthetic", "sp500")  # --source; --data PATH reads a file of the reader's own instead ("file")


def add_source_args(ap: argparse.ArgumentParser) -> None:
    """The data set a bench reads: ``--source`` (the synthetic market, the default, or the S&P 500
    sample), or ``--data PATH`` (a price file of your own, Parquet or CSV in the data contract's
    columns; ``--sectors`` and ``--clean`` as ``jobs.pipeline`` takes them), split as the S&P sample
    is. :func:`resolve_source` checks them after parsing."""
    ap.add_argument(
        "--source", choices=list(SOURCES), default=None,
        help="the synthetic market (default) or the real S&P 500 sample in ../shared/data",
    )  # fmt: skip
    ap.add_argument(
        "--data", type=Path, metavar="PATH", default=None,
        help="instead of --source: a Parquet or CSV price file of your own (the data contract's columns), "
        "split as the S&P sample is (no oracle)",
    )  # fmt: skip
    ap.add_argument(
        "--sectors", type=Path, metavar="PATH", default=None, help="with --data: a ticker,sector CSV"
    )
    ap.add_argument(
        "--clean", choices=["none", "drop", "repair"], default=None,
        help="with --data: how the file is cleaned (default repair, as the S&P sample is; none: refuse "
        "a file that breaks the contract)",
    )  # fmt: skip


def resolve_source(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Sets ``args.source`` (``file`` with ``--data``) and ``args.clean``; refuses mixed flags."""
    if args.data is not None:
        if args.source is not None:
            ap.error("give --source or --data, not both")
        if not args.data.is_file():
            ap.error(f"--data {args.data}: no such file")
        if not args.data.name.lower().endswith(PARQUET_SUFFIXES + CSV_SUFFIXES):
            ap.error(
                f"--data {args.data}: expected a file ending in one of {PARQUET_SUFFIXES + CSV_SUFFIXES}"
            )
        if args.sectors is not None and not args.sectors.is_file():
            ap.error(f"--sectors {args.sectors}: no such file")
        args.source, args.clean = "file", args.clean or "repair"
    else:
        if args.sectors is not None or args.clean is not None:
            ap.error("--sectors and --clean go with --data PATH")
        args.source = args.source or "synthetic"


def source_label(args: argparse.Namespace) -> str:
    """How a run names its data: ``--source S`` or ``--data PATH``."""
    return f"--data {args.data}" if args.source == "file" else f"--source {args.source}"


def load(
    source: str,
    n_tickers: int = 500,
    n_days: int = 1260,
    seed: int = 7,
    *,
    data: str | Path | None = None,
    sectors: str | Path | None = None,
    clean: str = "repair",
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """(prices, oracle) of a source: ``synthetic`` (the generator's, with its oracle), ``sp500`` (the
    sample in ../shared/data, repaired, sectors joined) or ``file`` (``data``; no oracle)."""
    if source == "synthetic":
        from ensemble.data.synthetic import generate_market

        m = generate_market(SyntheticConfig(n_tickers=n_tickers, n_days=n_days, seed=seed), horizons=HORIZONS)
        return m.prices, m.oracle
    from ensemble.data.files import load_file

    if source == "sp500":
        data, sectors, clean = SHARED / "sp500_daily.parquet", SHARED / "sp500_sectors.csv", "repair"
    elif source != "file" or data is None:
        raise ValueError(
            f"source must be one of {[*SOURCES, 'file']} (file: with a data path), got {source!r}"
        )
    prices, report = load_file(data, sectors_path=sectors, clean=clean)  # type: ignore[arg-type]
    if report is not None:
        print(f"{Path(data).name} cleaned ({clean}): {report.summary()}", flush=True)
    return prices, None


def data_identity(args: argparse.Namespace) -> dict[str, Any]:
    """What a run's data are (``source.json`` of a ``--save-preds`` folder): the source, the file's
    resolved path, or the synthetic market's size and seed."""
    if args.source == "file":
        return {"source": "file", "data": str(Path(args.data).resolve())}
    if args.source == "synthetic":
        return {"source": "synthetic", "tickers": args.tickers, "days": args.days, "seed": args.seed}
    return {"source": args.source}


def load_args(
    args: argparse.Namespace, n_tickers: int = 500, n_days: int = 1260, seed: int = 7
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """:func:`load` of the source :func:`add_source_args` parsed."""
    return load(args.source, n_tickers, n_days, seed, data=args.data, sectors=args.sectors, clean=args.clean)


def split_dates(dates: pd.DatetimeIndex, source: str) -> dict[str, pd.Timestamp]:
    """The fixed split of a source's dates: synthetic 60 / 15 / 25 %; real prices (the S&P sample, a
    file) train on the first 70% (its last 15% validate) and test on the rest."""
    n = len(dates)
    if source == "synthetic":  # 60 / 15 / 25
        tr, va = int(n * 0.60), int(n * 0.75)
    else:  # the first 70% train and validate (validation: its last 15%), the rest test
        va = int(n * 0.70)
        tr = int(va * 0.85)
    if not 0 < tr < va < n:  # a usage error (exit 2): the bench's fixed split does not fit the data
        raise ConfigError(f"{n} dates with features are too few to split into train / validation / test")
    return {
        "train_start": dates[0],
        "train_end": dates[tr - 1],
        "valid_start": dates[tr],
        "valid_end": dates[va - 1],
        "test_start": dates[va],
        "test_end": dates[-1],
    }


MIN_SHIFTED_TRAIN_DATES = 252  # a year of training dates at least, whatever the shift


def shift_back(sp: dict[str, pd.Timestamp], dates: pd.DatetimeIndex, n: int) -> dict[str, pd.Timestamp]:
    """The split with its training end and validation window ``n`` dates earlier (an earlier origin:
    its validation forecasts are held out from a fit that ended before them); the test period then
    runs from the day after the moved validation to the last date."""
    if n == 0:
        return dict(sp)
    limit = dates.get_loc(sp["train_end"]) - MIN_SHIFTED_TRAIN_DATES
    if not 0 <= n <= limit:  # a usage error (exit 2)
        raise ConfigError(
            f"--shift-back must be in [0, {max(limit, 0)}] (at least {MIN_SHIFTED_TRAIN_DATES} training "
            f"dates of the {len(dates)}), got {n}"
        )
    out = dict(sp)
    for k in ("train_end", "valid_start", "valid_end"):
        out[k] = dates[dates.get_loc(sp[k]) - n]
    out["test_start"] = dates[dates.get_loc(out["valid_end"]) + 1]
    return out


# -- scoring ----------------------------------------------------------------------------------------
def score(pred: pd.DataFrame, truth: pd.DataFrame) -> dict[str, float]:
    df = pred.merge(truth, on=["date", "ticker"], how="inner")
    out: dict[str, float] = {}
    for h in HORIZONS:
        s = ic_summary(rank_ic_by_date(df, f"pred_h{h}", f"target_h{h}"))
        out[f"ic_h{h}"], out[f"icir_h{h}"], out[f"n_h{h}"] = s["ic_mean"], s["icir"], s["ic_dates"]
    return out


# -- Prophet in a process pool ------------------------------------------------------------------------
def _prophet_chunk(args: tuple[pd.DataFrame, tuple[int, ...], dict[str, Any]]) -> ProphetForecaster:
    from jobs.ray_prophet import fit_chunk  # the chunk function of the Ray fan-out (quiet cmdstanpy)

    frame, horizons, params = args
    return fit_chunk(frame, horizons, params)[0]


def _one_thread() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"


def fit_prophet(train: pd.DataFrame, procs: int, params: dict[str, Any] | None = None) -> ProphetForecaster:
    cols = train[["date", "ticker", "close"]]
    tickers = np.sort(cols["ticker"].unique())
    chunks = [cols[cols["ticker"].isin(part)] for part in np.array_split(tickers, max(1, procs) * 4)]
    work = [(c, HORIZONS, dict(params or {})) for c in chunks]
    if procs <= 1:
        return ProphetForecaster.merge([_prophet_chunk(w) for w in work])
    with mp.get_context("spawn").Pool(procs, initializer=_one_thread) as pool:
        parts = pool.map(_prophet_chunk, work, chunksize=1)
    return ProphetForecaster.merge(parts)


def prophet_walk_forward(
    model: ProphetForecaster,
    prices: pd.DataFrame,
    rows: pd.DataFrame,
    every: int,
    procs: int,
    settings: Settings,
) -> tuple[pd.DataFrame, int]:
    """``rows``' forecasts as scoring and ``jobs.train`` make them
    (:func:`ensemble.scoring.per_ticker_walk_forward`: a ticker's model is refitted on the last
    ``training.training_days`` dates up to a date once it is more than ``every`` dates stale; each
    refit here in ``procs`` processes). Returns the forecasts and the number of per-ticker fits."""
    p, refits, _ = per_ticker_walk_forward(
        settings, model, prices, rows, every, fit=lambda frame: fit_prophet(frame, procs)
    )
    for r in refits:
        print(f"    Prophet refitted as of {r['as_of']}: {r['tickers']} tickers", flush=True)
    return p, sum(r["tickers"] for r in refits)


def tune(
    name: str, member_fit: pd.DataFrame, member_stop: pd.DataFrame, rows: Any, args: argparse.Namespace
) -> Any:
    """Tree model ``name`` tuned as ``jobs.train`` tunes it (:func:`jobs.ray_tune_trees.tune_tree_model`,
    ``--tune-trials`` trials on the stopping tail ``member_stop``, fitted on ``member_fit``), the best
    configuration fitted on ``rows`` (``fit_rows``), on a private local Ray with every core. Returns
    the ``TuneOutcome``."""
    import tempfile

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from ensemble.cost import CostMeter
    from jobs.ray_tune_trees import tune_tree_model

    if not ray.is_initialized():
        ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    params = json.loads(args.params) if args.params else {}
    settings = load_settings(
        overrides={
            "training": {"target": args.target, "early_stopping_fraction": args.early_stopping_fraction},
            "models": {name: params.get(name, {})},
        }
    )
    tr = settings.training
    meter = CostMeter(tr.cpu_hour_usd, tr.gpu_hour_usd, tr.cost_limit_usd)
    with tempfile.TemporaryDirectory(prefix="quality-tune-") as tmp:
        return tune_tree_model(
            name,
            member_fit,
            member_stop,
            settings,
            meter,
            num_samples=args.tune_trials,
            storage_path=tmp,
            refit=rows,
        )


# -- the run ------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    saved = Path(args.from_preds) if args.from_preds else None
    if saved is not None and (saved / "source.json").is_file():  # folders written since 2026-12-04
        theirs, ours = json.loads((saved / "source.json").read_text()), data_identity(args)
        if theirs != ours:  # a usage error (exit 2): forecasts of other data
            raise ConfigError(
                f"--from-preds {saved} holds forecasts of {theirs}, not of this run's data {ours}: "
                "give the flags it was written with"
            )
    prices, oracle = load_args(args, args.tickers, args.days, args.seed)
    tcols = [f"target_h{h}" for h in HORIZONS]
    refit_names: list[str] | None = None  # the members refitted after stopping (None: --from-preds)
    tuned_names: frozenset[str] = frozenset()  # the members tuned (--tune-trials, --tuned-models)
    if saved is not None:  # the members' forecasts of an earlier run: only the ensembles are fitted
        truth_all = pd.read_parquet(saved / "truth.parquet")
        sp = {k: pd.Timestamp(v) for k, v in json.loads((saved / "split.json").read_text()).items()}
        dates = pd.DatetimeIndex(np.sort(truth_all["date"].unique()))
        n_selected = None
    else:
        feats = build_features(prices, HORIZONS, n_jobs=None)
        dates = pd.DatetimeIndex(np.sort(feats["date"].unique()))
        sp = shift_back(split_dates(dates, args.source), dates, args.shift_back)
        pre = Preprocessor(k=args.k, cs_norm=args.cs_norm).fit(feats, sp["train_end"])
        close = prices[["date", "ticker", "close"]]
        frame = (
            pre.transform(feats)
            .merge(close, on=["date", "ticker"], how="left")
            .merge(trailing_volatility(prices), on=["date", "ticker"], how="left")
        )
        del feats
        n_selected = len(pre.selected_)
        truth_all = frame[["date", "ticker", *tcols, VOL_COLUMN]]
        train = window(frame, sp["train_start"], sp["train_end"])
        valid = window(frame, sp["valid_start"], sp["valid_end"])
        train_fit = cross_sectional_targets(train, args.target)
        valid_fit = cross_sectional_targets(valid, args.target)
        member_settings = load_settings(
            overrides={
                "training": {
                    "target": args.target,
                    "early_stopping_fraction": args.early_stopping_fraction,
                    "refit_after_stopping": args.refit_after_stopping,
                    "tuned_models": args.tuned_models,
                }
            }
        )
        member_fit, member_stop = member_windows(
            train, train_fit, valid_fit, member_settings
        )  # as prepare_data cuts them
        refit_names = sorted(refit_members(member_settings))  # refuses a model that cannot refit, now
        if args.tune_trials:  # refuses a model that cannot be tuned, now
            tuned_names = tuned_members(member_settings)
        lead_v = dates[max(0, dates.get_loc(sp["valid_start"]) - 70)]  # history for the sequence windows
        valid_in = frame[(frame["date"] >= lead_v) & (frame["date"] <= sp["valid_end"])].reset_index(
            drop=True
        )
        lead = dates[max(0, dates.get_loc(sp["test_start"]) - 70)]
        test_in = frame[frame["date"] >= lead].reset_index(drop=True)
    truth = truth_all[truth_all["date"] >= sp["test_start"]].reset_index(drop=True)
    vtruth = window(truth_all, sp["valid_start"], sp["valid_end"])
    # every label realised by the validation's end: the ensemble's universe history
    history = pd.concat([window(truth_all, sp["train_start"], sp["train_end"]), vtruth], ignore_index=True)
    prep_s = time.perf_counter() - t0
    print(
        f"\n== bench/quality.py {source_label(args)}: {prices['ticker'].nunique()} tickers x {len(dates)} days, "
        + (f"forecasts from {saved}" if saved is not None else
           f"{n_selected} features selected (train-only), target {args.target}, cs_norm {args.cs_norm}")
        + f"; prep {prep_s:.0f} s",
        flush=True,
    )  # fmt: skip
    print("split: " + ", ".join(f"{k} {v.date()}" for k, v in sp.items()), flush=True)

    save_dir = Path(args.save_preds) if args.save_preds else None
    if (
        save_dir is not None
    ):  # the truth of every date (the ensemble and its intervals can be refitted offline)
        save_dir.mkdir(parents=True, exist_ok=True)
        truth_all.to_parquet(save_dir / "truth.parquet")
        (save_dir / "split.json").write_text(json.dumps({k: str(v.date()) for k, v in sp.items()}))
        (save_dir / "source.json").write_text(json.dumps(data_identity(args)))  # checked by --from-preds
    rows: dict[str, dict[str, Any]] = {}
    vrows: dict[str, dict[str, Any]] = {}
    preds: dict[str, pd.DataFrame] = {}
    vpreds: dict[str, pd.DataFrame] = {}
    for name in args.models:
        t = time.perf_counter()
        if saved is not None:
            if not (saved / f"test_{name}.parquet").exists():
                continue
            p = pd.read_parquet(saved / f"test_{name}.parquet")
            pv = pd.read_parquet(saved / f"valid_{name}.parquet")
            preds[name], vpreds[name] = p, pv
            rows[name], vrows[name] = score(p, truth), score(pv, vtruth)
            continue
        tuned: Any = None  # the TuneOutcome of a tuned tree model (--tune-trials)
        try:
            if name == "prophet":
                model: Any = fit_prophet(train, args.prophet_procs)
            else:
                params = json.loads(args.params).get(name, {}) if args.params else {}
                model = create_model(name, horizons=HORIZONS, **params)
                rows_fit = fit_rows(
                    type(model), train_fit, member_fit, member_stop, name in (refit_names or [])
                )
                if name in tuned_names:  # as jobs.train fits it
                    tuned = tune(name, member_fit, member_stop, rows_fit, args)
                    model = tuned.model
                else:
                    rows_fit.fit(model)
            fit_s = time.perf_counter() - t
            p = model.predict(test_in)
            if name == "prophet":  # the validation dates as jobs.train, the test dates as jobs.score
                t_wf = time.perf_counter()
                v_rows = window(frame, sp["valid_start"], sp["valid_end"])
                pv, v_fits = prophet_walk_forward(
                    model, prices, v_rows, args.prophet_valid_refit_every, args.prophet_procs, member_settings
                )
                v_s = time.perf_counter() - t_wf
            else:
                pv = model.predict(valid_in)
            if name == "prophet" and args.prophet_refit_every > 0:
                once = p[p["date"] >= sp["test_start"]].reset_index(drop=True)
                rows["prophet_fit_once"] = score(once, truth)
                t_wf = time.perf_counter()
                t_rows = frame[frame["date"] >= sp["test_start"]]
                p, wf_fits = prophet_walk_forward(
                    model, prices, t_rows, args.prophet_refit_every, args.prophet_procs, member_settings
                )
                wf_s = time.perf_counter() - t_wf
        except Exception as exc:  # reported, never replaced
            logger.exception("%s failed", name)
            rows[name] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        p = p[p["date"] >= sp["test_start"]].reset_index(drop=True)
        pv = pv[pv["date"] >= sp["valid_start"]].reset_index(drop=True)
        preds[name], vpreds[name] = p, pv
        if save_dir is not None:
            p.to_parquet(save_dir / f"test_{name}.parquet")
            pv.to_parquet(save_dir / f"valid_{name}.parquet")
        rows[name] = {**score(p, truth), "fit_s": fit_s, "predict_s": time.perf_counter() - t - fit_s}
        vrows[name] = score(pv, vtruth)
        if name == "prophet":
            secs = list(model.fit_seconds_.values())
            rows[name].update(
                per_ticker_s=float(np.mean(secs)) if secs else float("nan"),
                tickers=len(model.models_),
                failed=len(model.failed_),
            )
            rows[name].update(
                valid_refit_every=args.prophet_valid_refit_every, valid_refit_fits=v_fits, valid_refit_s=v_s
            )
            if args.prophet_refit_every > 0:
                rows[name].update(refit_every=args.prophet_refit_every, refit_fits=wf_fits, refit_s=wf_s)
        elif hasattr(model, "n_epochs_"):
            rows[name].update(epochs=model.n_epochs_, best_epoch=model.best_epoch_)
        elif hasattr(model, "fit_info_"):
            rows[name]["rounds"] = {h: model.fit_info_[h].get("n_rounds") for h in HORIZONS}
        if tuned is not None:
            rows[name]["tuned"] = {
                "trials_run": tuned.trials_run,
                "best_params": tuned.best_params,
                "best_score": tuned.best_score,  # the tuning objective on the stopping tail
                "stop_reason": tuned.stop_reason,
            }
        print(
            f"  {name:<14} fit {fit_s:7.1f} s   valid Rank IC h5 {vrows[name]['ic_h5']:+.4f} "
            f"h20 {vrows[name]['ic_h20']:+.4f} h60 {vrows[name]['ic_h60']:+.4f}   "
            f"test h5 {rows[name]['ic_h5']:+.4f} h20 {rows[name]['ic_h20']:+.4f} h60 {rows[name]['ic_h60']:+.4f}",
            flush=True,
        )
    coverage: dict[str, float] = {}
    if preds:
        ec = EnsembleConfig()
        levels = ec.interval_levels
        for mode in ("learned", "fixed"):
            ens = EnsembleForecaster(ec.weights, HORIZONS, mode=mode, levels=levels, gate=ec.member_gate)
            ens.fit(vpreds, vtruth, history=history)
            p = ens.predict(preds, truth)
            name = "ensemble" if mode == "learned" else "ensemble_fixed"
            rows[name] = score(p, truth)
            vrows[name] = score(ens.cross_fit_predict(vpreds, vtruth, history=history), vtruth)
            if mode == "learned":
                coverage = interval_coverage(p, truth, HORIZONS, levels)
                rows[name]["weights"] = {h: ens.weights(h) for h in HORIZONS}
    ref: dict[str, dict[str, Any]] = {}
    vref: dict[str, dict[str, Any]] = {}
    if len(preds) > 1:  # what any weighting of these members could reach: weights fitted on the test dates
        ceiling = EnsembleForecaster(EnsembleConfig().weights, HORIZONS, lambdas=(0.0,), gate="none")
        ceiling.fit(preds, truth)
        ref["ensemble_ceiling"] = {
            **score(ceiling.predict(preds, truth), truth),
            "weights": {h: ceiling.weights(h) for h in HORIZONS},
        }
    if oracle is not None:
        o = oracle.rename(columns={f"oracle_h{h}": f"pred_h{h}" for h in HORIZONS})
        ref["oracle"] = score(o[o["date"] >= sp["test_start"]], truth)
        vref["oracle"] = score(o[(o["date"] >= sp["valid_start"]) & (o["date"] <= sp["valid_end"])], vtruth)
    for name, b in baseline_forecasts(prices, HORIZONS).items():
        if name == "zero":  # no ranking: its Rank IC is undefined
            continue
        ref[name] = score(b[b["date"] >= sp["test_start"]], truth)
        vref[name] = score(b[(b["date"] >= sp["valid_start"]) & (b["date"] <= sp["valid_end"])], vtruth)
    return {
        "source": args.source,
        "data": None if args.data is None else str(args.data),
        "target": args.target,
        "cs_norm": args.cs_norm,
        # the members' rows (None: their forecasts came from --from-preds, made under whatever rule)
        "early_stopping_fraction": None if saved is not None else args.early_stopping_fraction,
        "refit_after_stopping": refit_names,
        "split": {k: str(v.date()) for k, v in sp.items()},
        "n_tickers": int(prices["ticker"].nunique()),
        "n_days": len(dates),
        "k": n_selected,
        "models": rows,
        "valid": {**vrows, **vref},
        "reference": ref,
        "coverage": coverage,
        "prep_s": prep_s,
        "total_s": time.perf_counter() - t0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def table(res: dict[str, Any]) -> str:
    head = (
        f"{'':<16}" + "".join(f"{'IC h' + str(h):>10}{'ICIR':>8}" for h in HORIZONS) + f"{'fit s':>9}  note"
    )
    lines = [head]

    def line(name: str, r: dict[str, Any], note: str = "") -> str:
        if "error" in r:
            return f"{name:<16}FAILED (excluded): {r['error']}"
        cells = "".join(f"{r[f'ic_h{h}']:>+10.4f}{r[f'icir_h{h}']:>8.2f}" for h in HORIZONS)
        fit = f"{r['fit_s']:>9.1f}" if "fit_s" in r else f"{'':>9}"
        return f"{name:<16}{cells}{fit}  {note}"

    for name in [m for m in MODEL_NAMES if m in res["models"]]:
        r = res["models"][name]
        note = ""
        if "per_ticker_s" in r:
            note = f"{r['per_ticker_s']:.2f} s/ticker in-process, {r['tickers']} fitted, {r['failed']} failed"
            if r.get("valid_refit_every"):
                note += (
                    f"; validation: refitted every {r['valid_refit_every']} dates "
                    f"({r['valid_refit_fits']} fits, {r['valid_refit_s']:.0f} s)"
                )
            if "refit_every" in r:
                note += (
                    f"; test: refitted every {r['refit_every']} dates ({r['refit_fits']} fits, "
                    f"{r['refit_s']:.0f} s)"
                )
        elif "epochs" in r:
            note = f"{r['epochs']} epochs (best {r['best_epoch']})"
        lines.append(line(name, r, note))
    if "prophet_fit_once" in res["models"]:
        note = "Prophet's one fit through the training end on the test dates (not in the ensemble)"
        lines.append(line("prophet_fit_once", res["models"]["prophet_fit_once"], note))
    if "ensemble" in res["models"]:
        lines.append(line("ensemble", res["models"]["ensemble"], "learned weights (validation), calibrated"))
    if "ensemble_fixed" in res["models"]:
        lines.append(line("ensemble_fixed", res["models"]["ensemble_fixed"], "the default weights"))
    notes = {
        "oracle": "ceiling",
        "ensemble_ceiling": "weights fitted on the test dates: a diagnostic, not a forecast",
    }
    for name, r in res["reference"].items():
        lines.append(line(name, r, notes.get(name, "baseline")))
    ok = {n: r for n, r in res["models"].items() if "error" not in r and n in MODEL_NAMES}
    if ok and "oracle" in res["reference"]:
        best = max(ok, key=lambda n: ok[n]["ic_h5"])
        share = ok[best]["ic_h5"] / res["reference"]["oracle"]["ic_h5"]
        lines.append(f"best model at 5 days: {best}, {share:.0%} of the oracle's Rank IC")
    if "ensemble" in res["models"] and ok:
        cells = []
        for h in HORIZONS:
            best = max(ok, key=lambda n: ok[n][f"ic_h{h}"])
            gap = res["models"]["ensemble"][f"ic_h{h}"] - ok[best][f"ic_h{h}"]
            cells.append(f"h{h} {gap:+.4f} ({best})")
        lines.append("ensemble minus the best member: " + ", ".join(cells))
    if res.get("coverage"):
        lines.append("interval coverage on the test dates: " + ", ".join(
            f"{k} {v:.1%}" for k, v in res["coverage"].items()))  # fmt: skip
    lines.append(
        "validation dates (what defaults are chosen by; the ensembles scored out of fold, over the"
        " dates a fold had evidence for, counted at the end):"
    )
    for name, r in res.get("valid", {}).items():
        lines.append(
            f"  {name:<14}"
            + "".join(f"{r[f'ic_h{h}']:>+10.4f}{r[f'icir_h{h}']:>8.2f}" for h in HORIZONS)
            + (
                "   dates " + " / ".join(f"{r.get(f'n_h{h}', 0):.0f}" for h in HORIZONS)
                if "ensemble" in name
                else ""
            )
        )
    lines.append(f"total {res['total_s']:.0f} s, peak RSS {res['peak_rss_mib']:.0f} MiB")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_source_args(ap)
    ap.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=list(MODEL_NAMES))
    ap.add_argument("--tickers", type=int, default=500)
    ap.add_argument("--days", type=int, default=1260)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--prophet-procs", type=int, default=os.cpu_count() or 1)
    ap.add_argument(
        "--prophet-refit-every",
        type=int,
        default=ScoringConfig().prophet_refit_every_days,
        help="Prophet's test forecasts refitted once its models are more than N dates stale, as jobs.score "
        "serves them "
        "(default: scoring.prophet_refit_every_days; 0: the one fit through the training end)",
    )
    ap.add_argument(
        "--prophet-valid-refit-every",
        type=int,
        default=TrainingConfig().prophet_valid_refit_every_days,
        help="Prophet's validation forecasts from refits as its models go N dates stale, as jobs.train "
        "makes them (default: training.prophet_valid_refit_every_days; 0: the one fit through the "
        "training end)",
    )
    ap.add_argument("--target", choices=list(KINDS), default=TrainingConfig().target)
    ap.add_argument(
        "--early-stopping-fraction",
        type=float,
        default=TrainingConfig().early_stopping_fraction,
        help="the members that stop early stop on this last fraction of the training dates (default: "
        "training.early_stopping_fraction); 0: on the validation dates",
    )
    ap.add_argument(
        "--refit-after-stopping",
        nargs="*",
        metavar="MODEL",
        default=TrainingConfig().refit_after_stopping,
        help="the members that stop early and are then fitted again on the whole training window for "
        "the rounds or epochs they stopped at (default: training.refit_after_stopping; none: none)",
    )
    ap.add_argument("--cs-norm", choices=list(KINDS), default=FeatureConfig().cs_norm)
    ap.add_argument(
        "--shift-back",
        type=int,
        default=0,
        metavar="N",
        help="move the training end and the validation window N dates earlier (an earlier origin, whose "
        "validation forecasts bench/earlier_origin.py reads; the test period then starts right after the "
        "moved validation window, so its test figures cover other dates than the default split's)",
    )
    ap.add_argument(
        "--params", help='per-model parameters as JSON, e.g. {"xgboost": {"eval_metric": "rmse"}}'
    )
    ap.add_argument(
        "--tune-trials",
        type=int,
        default=0,
        metavar="N",
        help="tune the --tuned-models as jobs.train does (Ray Tune, N trials on the stopping tail, the best "
        "refitted as training.refit_after_stopping says) instead of fitting their DEFAULTS (0, the default)",
    )
    ap.add_argument(
        "--tuned-models",
        nargs="*",
        metavar="MODEL",
        default=TrainingConfig().tuned_models,
        help="the tree models --tune-trials tunes (default: training.tuned_models; none: none)",
    )
    ap.add_argument(
        "--save-preds",
        help="write each model's validation and test forecasts and the truth as Parquet to this folder",
    )
    ap.add_argument(
        "--from-preds",
        help="take the members' forecasts from a --save-preds folder instead of fitting them (ensembles only)",
    )
    ap.add_argument(
        "--json",
        help="write the results here (default artifacts/bench/quality_<source>.json; with --data, "
        "quality_file_<the file's name>.json, e.g. quality_file_prices.parquet.json)",
    )
    args = ap.parse_args()
    resolve_source(ap, args)
    if args.tune_trials < 0:
        ap.error("--tune-trials must be >= 0")
    if args.from_preds and args.shift_back:
        ap.error("--shift-back moves the split of a fit; --from-preds takes the split of the folder it reads")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("prophet.plot").setLevel(logging.CRITICAL)  # plotly is never used
    res = run(args)
    print(table(res), flush=True)
    name = f"file_{args.data.name}" if args.source == "file" else args.source
    out = Path(args.json or REPO / "artifacts" / "bench" / f"quality_{name}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str))
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))  # a file that breaks the contract: one error line, exit 3
