"""Monitoring: accuracy of the logged forecasts, drift, alerts (ensemble/monitor.py does the work).

    python -m jobs.monitor                                   # production version, the configured log
    python -m jobs.monitor --log artifacts/predlog --as-of 2023-06-30 --version 20240101T000000Z-ab12cd

Reads the prediction log (``--log DIR``: Parquet part files; else PostgreSQL table
``monitoring.table`` when the DSN variable is set; else ``monitoring.log_dir``) and the prices of the
data source up to ``--as-of``; prints the accuracy table (every version and arm in the log), the drift
table of ``--version`` (default production: its stored training reference against the model inputs
of the last ``monitoring.drift_days`` dates; the forecast distribution against its validation
forecasts) and the alerts, and writes everything as JSON (``--out``, default
``monitoring.out_dir/<as_of>.json``). Settings: ``--config`` (else the version's stored settings)
updated by ``--set``. Alerts are findings, not failures: the exit code is nonzero only on errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from ensemble.cli import EXIT_USAGE, date_arg
from ensemble.config import Settings, load_settings, parse_overrides, with_overrides
from ensemble.data.sources import load_prices
from ensemble.features import Preprocessor
from ensemble.monitor import (
    accuracy_table,
    drift_table,
    evaluate_alerts,
    forecast_drift,
    join_realised,
    log_alerts,
    rank_ic_series,
    recent_inputs,
    validation_baselines,
)
from ensemble.predlog import open_backend
from ensemble.registry import ModelRegistry
from ensemble.registry.errors import VersionNotFoundError
from ensemble.scoring import history_days

logger = logging.getLogger("jobs.monitor")


def _prices(settings: Settings, as_of: pd.Timestamp | None, first: pd.Timestamp | None) -> pd.DataFrame:
    data: dict[str, Any] = {}
    if as_of is not None:
        data["end"] = as_of.date().isoformat()
    if first is not None and settings.data.source == "postgres":
        data["start"] = first.date().isoformat()
    prices, _ = load_prices(with_overrides(settings, {"data": data}) if data else settings)
    return prices


def run(
    *,
    config: str | None = None,
    overrides: dict[str, Any] | None = None,
    registry_root: str | None = None,
    version: str | None = None,
    log_dir: str | None = None,
    as_of: str | None = None,
    out: str | None = None,
) -> dict[str, Any]:
    """Compute the tables and alerts, write the JSON; return the report (tables as DataFrames)."""
    overrides = overrides or {}
    base = load_settings(config, overrides)
    registry = ModelRegistry(registry_root or base.registry_root)
    notes: list[str] = []
    try:
        vid: str | None = registry.resolve(version or "production")
    except VersionNotFoundError:
        if version is not None:
            raise
        vid = None
        notes.append("no production version in the registry: no drift check")
    man = registry.manifest(vid) if vid is not None else None
    vsettings = Settings.model_validate(man["config"]) if man is not None else base
    settings = base if config is not None or man is None else with_overrides(vsettings, overrides)
    mc = settings.monitoring
    day = pd.Timestamp(as_of) if as_of is not None else None

    log = open_backend(settings, log_dir).read(end=day)
    first = None  # PostgreSQL prices: from the drift window's feature warm-up or the first forecast
    if day is not None:
        first = day - pd.Timedelta(days=int((mc.drift_days + history_days(vsettings)) * 1.5) + 30)
        first = min(first, log["as_of"].min()) if not log.empty else first
    prices = _prices(settings, day, first)
    day = day or pd.Timestamp(prices["date"].max())

    joined = join_realised(log, prices, day)
    accuracy = accuracy_table(joined, mc.rolling_window, min_tickers=mc.min_tickers)
    series = rank_ic_series(joined, mc.rolling_window, min_tickers=mc.min_tickers)
    baselines: dict[tuple[str, str, int], float] = {}
    for v in sorted(set(log["version"])):
        try:
            metrics = registry.manifest(v)["metrics"]
            baselines.update(validation_baselines(v, metrics, min_windows=mc.baseline_windows))
        except VersionNotFoundError:
            notes.append(f"version {v} of the log is not in the registry: no validation baseline")

    drift = forecasts = None
    if vid is not None and man is not None:
        reference = (
            registry.load_extra(vid, "drift_reference") if "drift_reference" in man["extras"] else None
        )
        if reference is None:
            notes.append(f"version {vid} has no drift_reference (trained before monitoring): no input drift")
        else:
            pre = Preprocessor.from_dict(registry.load_extra(vid, "preprocessor"))
            recent = recent_inputs(prices, vsettings, pre, day, mc.drift_days)
            drift = drift_table(
                reference,
                recent,
                mc.drift_features,
                psi_threshold=mc.psi_threshold,
                ks_threshold=mc.ks_threshold,
            )
        forecasts = forecast_drift(
            log, vid, days=mc.drift_days, reference=reference, psi_threshold=mc.psi_threshold,
            ks_threshold=mc.ks_threshold, bins=mc.drift_bins, sample=mc.drift_sample,
        )  # fmt: skip
    alerts = evaluate_alerts(mc, accuracy, drift, forecasts, baselines)
    log_alerts(alerts)

    report: dict[str, Any] = {
        "as_of": day.date().isoformat(),
        "version": vid,
        "registry": registry.uri,
        "log": {"rows": len(log), "scored": len(joined), "backend": repr(open_backend(settings, log_dir))},
        "accuracy": accuracy,
        "rank_ic_by_date": series,
        "drift": drift,
        "forecast_drift": forecasts,
        "alerts": [a.to_dict() for a in alerts],
        "notes": notes,
    }
    path = Path(out or Path(mc.out_dir) / f"{day.date().isoformat()}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(to_jsonable(report), indent=2, default=str))
    report["out"] = str(path)
    return report


def to_jsonable(report: dict[str, Any]) -> dict[str, Any]:
    """DataFrames as lists of records (dates as ISO strings, NaN as null)."""
    out: dict[str, Any] = {}
    for k, v in report.items():
        if isinstance(v, pd.DataFrame):
            out[k] = json.loads(v.to_json(orient="records", date_format="iso"))
        else:
            out[k] = v
    return out


def _table(df: pd.DataFrame | None, empty: str) -> str:
    if df is None or df.empty:
        return f"  ({empty})"
    show = df.copy()
    for c in show.columns:
        if pd.api.types.is_datetime64_any_dtype(show[c]):
            show[c] = show[c].dt.date
    return show.to_string(index=False, float_format=lambda x: f"{x:.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m jobs.monitor", description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", help="YAML settings (default: the version's stored settings)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting")
    ap.add_argument("--registry", help="registry root (path or URI); default: registry_root of the config")
    ap.add_argument("--version", help="registry version or alias whose drift to check (default: production)")
    ap.add_argument("--log", help="prediction log directory (Parquet); default: the configured log")
    ap.add_argument(
        "--as-of", type=date_arg, help="evaluate as of this date (default: the latest date of the prices)"
    )
    ap.add_argument("--out", help="JSON report path (default: monitoring.out_dir/<as_of>.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        r = run(
            config=args.config,
            overrides=parse_overrides(args.set),
            registry_root=args.registry,
            version=args.version,
            log_dir=args.log,
            as_of=args.as_of,
            out=args.out,
        )
    except VersionNotFoundError as exc:
        print(f"error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    print(
        f"monitoring as of {r['as_of']}: {r['log']['rows']} forecasts logged, {r['log']['scored']} realised"
    )
    print("accuracy (rolling window):")
    print(_table(r["accuracy"], "no logged forecast has a realised return yet"))
    print(f"input drift of version {r['version']}:" if r["version"] else "input drift:")
    print(_table(r["drift"], "not computed"))
    print("forecast drift:")
    print(_table(r["forecast_drift"], "not computed"))
    print(f"alerts: {len(r['alerts'])}")
    for a in r["alerts"]:
        print(f"  {a['rule']}: {a['subject']} = {a['value']:.4f} (threshold {a['threshold']:.4f})")
    for n in r["notes"]:
        print(f"note: {n}")
    print(f"wrote {r['out']}")
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    sys.exit(run_main(main))
