"""The training job: data -> features -> six models on Ray -> one registry version (-> promotion).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \\
        python -m jobs.train --config cluster/train.yaml --registry /abs/path/registry
    python -m jobs.train --config cluster/train.yaml          # a private local Ray, or joins $RAY_ADDRESS

Stages (each metered for the cost report):
  data      load_prices(settings): synthetic (default), files or PostgreSQL
  features  build_features + a Preprocessor fitted on the training dates only (k from config)
  prophet   one fit per ticker, Ray tasks over chunks of tickers (jobs.ray_prophet), through the
            training end; validated as scoring serves it, refitted along the validation dates every
            training.prophet_valid_refit_every_days; stored refitted through the validation end
  lstm, transformer   Ray Train TorchTrainer, checkpoint per epoch, resumable (jobs.ray_train_torch)
  xgboost, lightgbm, random_forest   those in training.tuned_models: Ray Tune, Optuna + ASHA, trials
            within the budget (jobs.ray_tune_trees); the others a plain fit of their DEFAULTS, billed
            for their n_jobs threads
  validate  each model's and the weighted ensemble's Rank IC on the validation dates (a tree model's
            forecasts, tuned or not, billed for its n_jobs threads)

Split: the most recent ``training.valid_fraction`` of the dates validate; the ``training.training_days``
dates before them train, with every label realised after the training window's end purged.

A model that fails is reported as degraded in the summary and the manifest; it is never replaced.
The version is promoted to ``production`` only when its ensemble validation Rank IC (shortest
horizon) beats the current production's (``--no-promote`` skips the attempt).

Under ``ray job submit`` the working directory is a temporary copy: give ``--registry`` (or
``registry_root`` in the config) as an absolute path or a pyarrow filesystem URI.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd

from ensemble.backtest.metrics import forecast_metrics, interval_coverage
from ensemble.config import MODEL_NAMES, Settings, load_settings, parse_overrides
from ensemble.cost import CostMeter
from ensemble.models import get_model_class
from ensemble.models.base import Forecaster
from ensemble.models.ensemble import VOL_COLUMN, EnsembleForecaster
from ensemble.monitor import training_reference
from ensemble.registry import ModelRegistry
from ensemble.training import Prepared, member_params, prepare_data, tuned_members

logger = logging.getLogger("jobs.train")


def stage_groups(names: Sequence[str], tuned: Collection[str] = ()) -> list[list[str]]:
    """The training stages, by capability: fixed-cost fits first (per-ticker, then the sequence models,
    which train side by side), then the ``tuned`` models one after the other (each runs its trials
    concurrently), so that hyperparameter search spends what is left of the budget."""
    classes = {n: get_model_class(n) for n in names}
    per_ticker = [n for n in names if classes[n].per_ticker]
    sequences = [n for n in names if classes[n].uses_sequences and n not in per_ticker]
    rest = [n for n in names if n not in per_ticker and n not in sequences]
    rest.sort(key=lambda n: n in tuned)  # untuned fits before the tuned ones
    return [[n] for n in per_ticker] + ([sequences] if sequences else []) + [[n] for n in rest]


def side_by_side(group: Sequence[str], settings: Settings) -> int:
    """How many models of a stage group train at once: a sequence model's Ray Train run reserves
    ``num_workers x cpus_per_worker`` CPUs; a second run that does not fit would only wait for the first
    (or, with fewer threads each, run slower than the two one after the other)."""
    import ray

    if len(group) < 2:
        return 1
    rc = settings.ray
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    return max(1, min(len(group), int(cpus // (rc.num_workers * rc.cpus_per_worker))))


def connect_ray(settings: Settings) -> str:
    """Join the cluster named by ``ray.address`` / ``$RAY_ADDRESS``, else start a private local Ray."""
    import ray

    if ray.is_initialized():
        return "already connected"
    address = settings.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
        return f"joined {address}"
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local Ray on loopback
    # address="local": always a fresh private instance, never a cluster a bare ray.init() would find
    # through Ray's record of the last `ray start` (possibly stopped since); join one with ray.address.
    # With the dashboard (on loopback): Ray Train's placement-group cleaner polls the State API, which
    # the dashboard serves; without it every poll fails and logs a warning, once a second.
    ray.init(address="local", include_dashboard=True, dashboard_host="127.0.0.1")
    return "local Ray"


def _prophet_fanout(
    name: str, frame: pd.DataFrame, settings: Settings, meter: CostMeter, progress: bool, stage: str = ""
) -> Any:
    """One fit per ticker of ``frame`` in the Ray fan-out (jobs.ray_prophet), metered as ``stage``."""
    from jobs.ray_prophet import fit_prophet_fanout

    stage = stage or name
    with meter.stage(f"{stage}.driver", cpus=0.0):
        r = fit_prophet_fanout(
            frame,
            horizons=settings.horizons,
            params=member_params(settings, name),
            chunk_size=settings.ray.prophet_chunk_size,
            task_cpus=settings.ray.prophet_task_cpus,
            progress=progress,
        )
    meter.record(stage, cpu_s=r.task_cpu_s)
    return r


def _fit_model(
    name: str, prep: Prepared, settings: Settings, meter: CostMeter, progress: bool, tune: bool
) -> tuple[Forecaster, dict[str, Any]]:
    """Fit model ``name`` on Ray, chosen by its capabilities: per ticker -> the Prophet fan-out of Ray
    tasks; sequences -> Ray Train; ``tune`` (named in ``training.tuned_models``) -> Ray Tune; otherwise a
    plain fit of its ``DEFAULTS`` (and ``models.<name>``), metered. A member
    that stops early stops on the tail of the training window (and, when named in
    ``training.refit_after_stopping``, is then fitted again on the whole window for the rounds or
    epochs it stopped at), the tuned models are tuned there, and the rest fit
    the whole window (``Prepared.member_rows``): no member reads a validation label."""
    cls = get_model_class(name)
    rows = prep.member_rows(cls)
    train, valid = rows.train, rows.valid
    if cls.per_ticker:
        r = _prophet_fanout(name, train, settings, meter, progress)
        if not r.model.tickers_:
            raise RuntimeError(f"{name}: no ticker could be fitted ({len(r.failures)} failures)")
        return r.model, {
            "tickers_fitted": len(r.model.tickers_),
            "failures": r.failures,
            "chunks": r.n_chunks,
            "nodes": len(r.tickers_per_node),
            "wall_s": r.wall_s,
        }
    if cls.uses_sequences:
        from jobs.ray_train_torch import train_sequence_model

        n = train_sequence_model(name, train, valid, settings, meter, refit_on=rows.refit_on)
        return n.model, {
            "epochs_run": n.epochs_run,
            "val_loss": n.val_loss,
            "restarts": n.resumed_from_epoch,
            "refit": n.model.refit_,
        }
    if tune:
        from jobs.ray_tune_trees import tune_tree_model

        t = tune_tree_model(name, prep.member_fit, prep.member_stop, settings, meter, refit=rows)
        return t.model, {
            "best_params": t.best_params,
            "best_score": t.best_score,
            "trials_requested": t.trials_requested,
            "trials_run": t.trials_run,
            "stop_reason": t.stop_reason,
            "trial_nodes": len(set(t.trial_nodes.values())),
        }
    model = cls(horizons=settings.horizons, **member_params(settings, name))
    with meter.stage(name, cpus=model.threads):  # a tree model's fit runs on its n_jobs threads
        return rows.fit(model), {}


def _validate_per_ticker(
    name: str, model: Forecaster, prep: Prepared, settings: Settings, meter: CostMeter, progress: bool
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """The per-ticker member's validation forecasts as scoring serves them
    (``scoring.per_ticker_walk_forward`` every ``training.prophet_valid_refit_every_days``), each
    refit in the Ray fan-out (metered as ``{name}.valid_refit``; the forecasting in this process as
    ``{name}.validate``, one CPU)."""
    from ensemble import scoring

    refit_s = 0.0

    def fit(frame: pd.DataFrame) -> Forecaster:
        nonlocal refit_s
        t = time.perf_counter()
        r = _prophet_fanout(name, frame, settings, meter, progress, stage=f"{name}.valid_refit")
        refit_s += time.perf_counter() - t
        return r.model

    t0 = time.perf_counter()
    d = prep.eval_frame["date"]
    rows = prep.eval_frame[(d >= prep.split.valid_start) & (d <= prep.split.valid_end)]
    every = settings.training.prophet_valid_refit_every_days
    p, refits, _ = scoring.per_ticker_walk_forward(settings, model, prep.prices, rows, every, fit=fit)
    own = max(0.0, time.perf_counter() - t0 - refit_s)
    meter.record(f"{name}.validate", cpu_s=own, wall_s=own)
    return p, refits


def _refit_through(
    name: str,
    model: Forecaster,
    through: pd.Timestamp,
    prep: Prepared,
    settings: Settings,
    meter: CostMeter,
    progress: bool,
) -> tuple[Forecaster, dict[str, Any]]:
    """The per-ticker member as stored: refitted on the history up to ``through`` (the validation
    end), the way scoring refits a stale model (``scoring.per_ticker_fit_frame``), after its
    validation forecasts were made by the fit through the training end. So a fresh version serves
    the dates after its validation end without refitting all its per-ticker models on the first
    request. A ticker whose refit fails keeps its training-end model (listed)."""
    from ensemble import scoring

    t0 = time.perf_counter()
    fitted: Any = model
    frame = scoring.per_ticker_fit_frame(settings, fitted, prep.prices, through, fitted.tickers_)
    r = _prophet_fanout(name, frame, settings, meter, progress, stage=f"{name}.refit")
    kept = sorted(set(fitted.tickers_) - set(r.model.tickers_))
    return scoring.merge_refit(fitted, r.model), {
        "through": str(pd.Timestamp(through).date()),
        "tickers": len(r.model.tickers_),
        "kept_training_end_fit": kept,
        "wall_s": time.perf_counter() - t0,
    }


def run(
    settings: Settings,
    *,
    registry_root: str | None = None,
    promote: bool = True,
    progress: bool = True,
    prepared: Prepared | None = None,
    prices: pd.DataFrame | None = None,
    oracle: pd.DataFrame | None = None,
) -> dict[str, Any]:
    """Train every configured model, store the version, try to promote it; return the summary.
    ``prepared``: the data stage's output when the caller already ran :func:`prepare_data`;
    ``prices`` (and the synthetic market's ``oracle``): the table to train on when the caller already
    loaded it (otherwise the data stage loads what ``settings.data`` names)."""
    t_start = time.perf_counter()
    horizons = list(settings.horizons)
    tr = settings.training
    tuned = tuned_members(settings)  # refuses a model that cannot be tuned, before any work
    meter = CostMeter(tr.cpu_hour_usd, tr.gpu_hour_usd, tr.cost_limit_usd)
    prep = prepared or prepare_data(settings, meter, prices=prices, oracle=oracle)
    oracle, fingerprint, pre, split = prep.oracle, prep.fingerprint, prep.preprocessor, prep.split
    train, valid, eval_frame = prep.train, prep.valid, prep.eval_frame

    connect_ray(settings)
    models: dict[str, Forecaster] = {}
    details: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    preds: dict[str, pd.DataFrame] = {}
    degraded: dict[str, str] = {}
    wall: dict[str, float] = {}

    def fit_and_validate(name: str) -> tuple[Forecaster, dict[str, Any], pd.DataFrame, float]:
        t0 = time.perf_counter()
        model, info = _fit_model(name, prep, settings, meter, progress, tune=name in tuned)
        if not get_model_class(name).per_ticker:
            with meter.stage(f"{name}.validate", cpus=model.threads):
                p = model.predict(eval_frame)
                p = p[p["date"] >= split.valid_start].reset_index(drop=True)
            return model, info, p, time.perf_counter() - t0
        # per ticker: validated as scoring serves it (refitted as it goes stale), stored fitted
        # through the validation end
        p, info["valid_refits"] = _validate_per_ticker(name, model, prep, settings, meter, progress)
        try:
            model, info["stored_fit"] = _refit_through(
                name, model, split.valid_end, prep, settings, meter, progress
            )
        except Exception as exc:  # the training-end fit is kept, and the reason recorded
            logger.warning("%s: refit through %s failed (%s): the training-end fit is stored",
                           name, split.valid_end.date(), exc)  # fmt: skip
            why = f"{type(exc).__name__}: {exc}"
            info["stored_fit"] = {"through": str(split.train_end.date()), "error": why}
        return model, info, p, time.perf_counter() - t0

    for group in stage_groups([m for m in MODEL_NAMES if m in tr.models], tuned):
        t_group = time.perf_counter()
        # models of one group train side by side, as many at once as the cluster's CPUs hold (on 2
        # cores with 2 CPUs per worker: one after the other, each using both cores' threads)
        with ThreadPoolExecutor(side_by_side(group, settings), thread_name_prefix="train") as pool:
            futures = {name: pool.submit(fit_and_validate, name) for name in group}
        for name, fut in futures.items():
            try:
                model, info, p, wall[name] = fut.result()
            except Exception as exc:  # one failing model is reported, never replaced
                logger.error("model %s failed: excluded from this version", name, exc_info=exc)
                degraded[name] = f"{type(exc).__name__}: {exc}"
                wall[name] = time.perf_counter() - t_group
                continue
            models[name], details[name], preds[name] = model, info, p
            metrics[name] = forecast_metrics(p, valid, horizons, prefix="valid_")
            logger.info("%s: %.1f s, valid Rank IC h%d %.4f", name, wall[name], horizons[0],
                        metrics[name].get(f"valid_rank_ic_h{horizons[0]}", float("nan")))  # fmt: skip
        if len(group) > 1:
            wall[" + ".join(group)] = time.perf_counter() - t_group
    if not models:
        raise RuntimeError(f"every model failed: {degraded}")

    ec = settings.ensemble
    with meter.stage("ensemble", cpus=1):
        truth = valid[["date", "ticker", *[f"target_h{h}" for h in horizons], VOL_COLUMN]]
        ensemble = EnsembleForecaster(
            ec.weights, horizons, mode=ec.mode, levels=ec.interval_levels, gate=ec.member_gate
        )
        history = prep.label_history()
        ensemble.fit(preds, truth, history=history)
        # scored out of fold: the ensemble learns on the validation dates, so each half of them is
        # predicted by an ensemble fitted on the other half, the labels that overlap it purged
        oof = ensemble.cross_fit_predict(preds, truth, history=history)
        # the forecasts' drift reference: the served ensemble's own forecasts of the validation dates
        valid_forecasts = ensemble.predict(preds, truth)
    metrics["ensemble"] = {
        **forecast_metrics(oof, valid, horizons, prefix="valid_"),
        **interval_coverage(oof, valid, horizons, ec.interval_levels, prefix="valid_"),
    }
    if oracle is not None:
        o = oracle.rename(columns={f"oracle_h{h}": f"pred_h{h}" for h in horizons})
        o = o[(o["date"] >= split.valid_start) & (o["date"] <= split.valid_end)]
        metrics["oracle"] = forecast_metrics(o, valid, horizons, prefix="valid_")

    samples = _samples(settings, models, pre, ensemble, degraded, prep)
    cost = meter.report()
    registry = ModelRegistry(registry_root or settings.registry_root)
    version = registry.create_version(
        models,
        metrics=metrics,
        config=settings.model_dump(mode="json"),
        data_fingerprint=fingerprint,
        cost=cost,
        notes=[f"degraded {k}: {v}" for k, v in degraded.items()],
        extras={
            "preprocessor": pre.to_dict(),
            "ensemble": ensemble.to_dict(),
            "drift_reference": training_reference(settings, train, pre.selected_, valid_forecasts),
            "training": {
                "split": split.as_dict(),
                "models": details,
                "degraded": degraded,
                "wall_s": wall,
                "rows": {"train": len(train), "valid": len(valid)},
            },
            **({"samples": samples} if samples is not None else {}),
        },
    )
    promotion = None
    if promote:
        res = registry.promote(version, metric=f"valid_rank_ic_h{horizons[0]}")
        promotion = {"promoted": res.promoted, "reason": res.reason, "production": res.production}
    return {
        "version": version,
        "registry": registry.uri,
        "models": sorted(models),
        "degraded": degraded,
        "metrics": metrics,
        "details": details,
        "split": split.as_dict(),
        "cost": cost,
        "wall_s": {**wall, "total": time.perf_counter() - t_start},
        "promotion": promotion,
    }


def _samples(
    settings: Settings,
    models: dict[str, Forecaster],
    pre: Any,
    ensemble: EnsembleForecaster,
    degraded: dict[str, str],
    prep: Prepared,
) -> dict[str, Any] | None:
    """A few forecasts of the last validation date through ``scoring.score`` (what jobs.deploy checks
    the stored version against); None, logged, if they cannot be computed."""
    from ensemble import scoring

    lv = scoring.LoadedVersion("training", settings, pre, ensemble, dict(models), tuple(settings.horizons),
                               dict(degraded))  # fmt: skip
    try:
        return scoring.sample_forecasts(lv, prep.prices, prep.split.valid_end)
    except Exception:
        logger.exception("sample forecasts could not be computed: the version records none")
        return None


def format_summary(s: dict[str, Any]) -> str:
    hs = sorted(
        {
            int(k.rsplit("h", 1)[1])
            for m in s["metrics"].values()
            for k in m
            if k.startswith("valid_rank_ic_h")
        }
    )
    lines = [f"version {s['version']} in {s['registry']}", f"split {s['split']}"]
    lines.append(f"{'model':<14}" + "".join(f"{'IC h' + str(h):>10}" for h in hs) + f"{'wall s':>9}")
    for name, m in s["metrics"].items():
        ics = "".join(f"{m.get(f'valid_rank_ic_h{h}', float('nan')):>10.4f}" for h in hs)
        wall = s["wall_s"].get(name)
        lines.append(f"{name:<14}{ics}" + (f"{wall:>9.1f}" if wall is not None else ""))
    for name, why in s["degraded"].items():
        lines.append(f"{name:<14}DEGRADED: {why}")
    c = s["cost"]
    lines.append(
        f"cost: ${c['total_usd']:.4f} of ${c['limit_usd']:.2f} ({c['total_cpu_s']:.0f} CPU-s, {c['total_gpu_s']:.0f} GPU-s)"
    )
    for reason in c.get("stopped", []):
        lines.append(f"budget: {reason}")
    if s["promotion"] is not None:
        lines.append(f"promotion: {s['promotion']['reason']}")
    lines.append(f"total wall {s['wall_s']['total']:.1f} s")
    return "\n".join(lines)  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.train", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML settings (default: built-in defaults)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    ap.add_argument("--registry", help="registry root (path or URI); default: registry_root of the config")
    ap.add_argument(
        "--no-promote", action="store_true", help="store the version without trying to promote it"
    )
    ap.add_argument("--summary-json", help="also write the summary as JSON to this file")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = load_settings(args.config, parse_overrides(args.set))
    summary = run(
        settings, registry_root=args.registry, promote=not args.no_promote, progress=not args.no_progress
    )
    print(format_summary(summary), flush=True)
    if args.summary_json:
        Path(args.summary_json).write_text(json.dumps(summary, indent=2, default=str))
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    sys.exit(run_main(main))
