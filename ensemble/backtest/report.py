"""The backtest report: one self-contained HTML file (plotly, its JavaScript inlined, so it opens
offline) plus the tables as CSV and JSON beside it.

:func:`write_report` takes one JSON-able ``result`` dict (``jobs.backtest`` produces it) and a
directory, and writes::

    report.html    equity curves, rolling Rank IC, interval coverage, ensemble weights, metrics table
    metrics.csv / metrics.json    the metrics table, one row per (model, horizon)
    weights.csv / weights.json    long table (horizon, fold, member, weight), if weights are given
    folds.csv / folds.json        the folds table, if folds are given
    actions.csv / actions.json    realised forward return of BUY / HOLD / SELL, if actions are given
    result.json                   the whole ``result`` (NaN written as null)

The ``result`` format. A *series* is ``{"dates": ["2016-08-01", ...], "values": [float | None, ...]}``
(ISO dates, equal lengths; :func:`series_payload` makes one from a date-indexed pandas Series).
Horizon keys are strings (``"5"``), as JSON object keys must be; ints are accepted too.

``title`` (str)
    The report's heading.
``horizons`` (list[int])
    The forecast horizons in trading days, in display order.
``metrics`` (list[dict])
    One row per (model, horizon). Required: ``model`` (str), ``horizon`` (int). Recognised (any
    may be missing or None; shown in this order, other keys after them): ``kind`` (``"ensemble"``,
    ``"member"`` or ``"baseline"``: styles the curves), forecast metrics from
    :func:`ensemble.backtest.evaluation.evaluate` (``rank_ic``, ``icir``, ``rank_ic_t``, ``ic``,
    ``directional_accuracy``, ``rmse``, ``rmse_zero``, ``coverage80``, ``coverage95``, ...),
    portfolio statistics from :meth:`ensemble.backtest.portfolio.PortfolioResult.stats`
    (``ann_return``, ``ann_vol``, ``sharpe``, ``max_drawdown``, ``turnover``, ``hit_rate``), and a
    seed spread as ``<metric>_std`` with ``seeds`` (e.g. ``rank_ic_std`` over 3 seeds).
``equity`` (dict)
    ``{horizon: {model: series}}``: cumulative net return of each model's long-short portfolio (and
    baselines, e.g. ``equal_weight``), 0 at the start (:meth:`PortfolioResult.equity`). One plot per
    horizon. A flat ``{model: series}`` is accepted (one plot).
``rolling_rank_ic`` (dict)
    ``{horizon: {model: series}}``: the rolling mean (e.g. 63 dates) of the daily Rank IC
    (:func:`~ensemble.backtest.evaluation.daily_rank_ic` then
    :func:`~ensemble.backtest.evaluation.rolling`). A flat ``{model: series}`` is accepted.
``coverage`` (dict)
    ``{horizon: {level: series}}``, level in percent as a string (``"80"``, ``"95"``): the rolling
    share of realised returns inside the ensemble's interval
    (:func:`~ensemble.backtest.evaluation.daily_coverage` then ``rolling``); the nominal level is
    drawn beside it. A flat ``{level: series}`` is accepted.
``weights`` (dict)
    ``{horizon: {fold_label: {member: weight}}}``: the ensemble's learned weights per horizon and
    fold (``EnsembleForecaster.weights(h)``), drawn as stacked bars per fold.
``folds`` (list[dict], optional)
    One row per fold, e.g. ``{"fold": "1", "train_start", "train_end", "test_start", "test_end",
    "n_train", "n_test"}`` (dates as ISO strings); shown as a table.
``actions`` (list[dict], optional)
    One row per (horizon, action) from :func:`ensemble.backtest.evaluation.action_returns`: the
    realised forward return of the recommendation engine's BUY / HOLD / SELL over the test dates.
``notes`` (list[str], optional)
    Free text lines shown under the title (data, command, costs, caveats).
``meta`` (dict[str, scalar], optional)
    Settings shown as a small key/value table (cost_bps, quantile, hold, retrain_every, ...).

Every section is optional except ``title`` and ``metrics``; a missing one is left out of the page.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)

REPORT_NAME = "report.html"
METRIC_ORDER = (
    "model",
    "horizon",
    "kind",
    "rank_ic",
    "rank_ic_std",
    "rank_ic_raw",
    "icir",
    "rank_ic_t",
    "rank_ic_hit",
    "ic",
    "directional_accuracy",
    "rmse",
    "rmse_zero",
    "coverage80",
    "coverage95",
    "ann_return",
    "ann_vol",
    "sharpe",
    "sharpe_std",
    "max_drawdown",
    "turnover",
    "hit_rate",
    "seeds",
)
BASELINE_NAMES = frozenset({"zero", "reversal_5d", "momentum_12_1", "equal_weight", "oracle"})
_STYLE = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
table.tbl{border-collapse:collapse;font-size:13px;margin:8px 0}
table.tbl th,table.tbl td{border:1px solid #ddd;padding:3px 8px;text-align:right}
table.tbl th{background:#f4f4f4}table.tbl td:first-child,table.tbl th:first-child{text-align:left}
table.tbl tr.ensemble td{font-weight:bold;background:#eef5ff}table.tbl tr.baseline td{color:#666}
ul.notes{color:#444}
"""


# -- JSON helpers -------------------------------------------------------------------------------------
def series_payload(series: pd.Series) -> dict[str, list[Any]]:
    """``{"dates": [ISO dates], "values": [float | None]}`` from a date-indexed Series."""
    idx = pd.DatetimeIndex(series.index)
    vals = series.to_numpy(np.float64, na_value=np.nan)
    return {
        "dates": [d.strftime("%Y-%m-%d") for d in idx],
        "values": [float(v) if math.isfinite(v) else None for v in vals],
    }


def jsonable(obj: Any) -> Any:
    """``obj`` with numpy scalars and arrays as Python values, timestamps as ISO strings, NaN and
    infinities as None, tuples as lists and keys as strings: safe for strict JSON."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray, pd.Index)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, pd.Series):
        return series_payload(obj)
    if isinstance(obj, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(obj).isoformat()
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"report result holds a {type(obj).__name__}, which is not JSON-able: {obj!r:.80}")


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(jsonable(obj), indent=1, allow_nan=False) + "\n", encoding="utf-8")


# -- tables -------------------------------------------------------------------------------------------
def metrics_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The metrics rows as a table: the known columns in :data:`METRIC_ORDER`, others after them."""
    df = pd.DataFrame([dict(r) for r in rows])
    for col in ("model", "horizon"):
        if col not in df.columns:
            raise ValueError(f"every metrics row needs {col!r}; the rows have {sorted(df.columns)}")
    cols = [c for c in METRIC_ORDER if c in df.columns] + [c for c in df.columns if c not in METRIC_ORDER]
    return df[cols]


def weights_frame(weights: Mapping[Any, Mapping[Any, Mapping[str, float]]]) -> pd.DataFrame:
    """The weights as a long table (horizon, fold, member, weight)."""
    rows = [
        {"horizon": int(h), "fold": str(f), "member": str(m), "weight": float(w)}
        for h, folds in weights.items()
        for f, members in folds.items()
        for m, w in members.items()
    ]
    return pd.DataFrame(rows, columns=["horizon", "fold", "member", "weight"])


COUNT_COLUMNS = frozenset({"horizon", "n_dates", "n_obs", "days", "seeds", "ic_dates", "n_train", "n_test"})


def _fmt(v: Any, count: bool = False) -> str:
    if v is None or (isinstance(v, (float, np.floating)) and not math.isfinite(v)):
        return "–"
    if count and isinstance(v, (int, float, np.integer, np.floating)) and float(v).is_integer():
        return f"{int(v):d}"
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if f != 0 and abs(f) < 1e-3:
            return f"{f:.2e}"
        return f"{f:.4f}" if abs(f) < 100 else f"{f:,.0f}"
    return str(v)


def _html_table(df: pd.DataFrame, row_class: Sequence[str] | None = None) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in df.columns)
    body = []
    counts = [str(c) in COUNT_COLUMNS for c in df.columns]
    for i, rec in enumerate(df.itertuples(index=False, name=None)):
        cls = f' class="{html.escape(row_class[i])}"' if row_class else ""
        cells = "".join(f"<td>{html.escape(_fmt(v, n))}</td>" for v, n in zip(rec, counts, strict=True))
        body.append(f"<tr{cls}>{cells}</tr>")
    return f'<table class="tbl"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# -- figures ------------------------------------------------------------------------------------------
def _is_series(x: Any) -> bool:
    return isinstance(x, Mapping) and "dates" in x and "values" in x


def _groups(section: Mapping[Any, Any]) -> dict[str, dict[str, Mapping[str, Any]]]:
    """``{group: {name: series}}`` from a nested section, or ``{"": section}`` from a flat one."""
    if all(_is_series(v) for v in section.values()):
        return {"": {str(k): v for k, v in section.items()}}
    return {str(g): {str(k): v for k, v in inner.items()} for g, inner in section.items()}


def _kinds(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    kinds = {str(r["model"]): str(r["kind"]) for r in rows if r.get("kind")}
    return kinds


def _kind(name: str, kinds: Mapping[str, str]) -> str:
    if name in kinds:
        return kinds[name]
    if name.startswith("ensemble"):
        return "ensemble"
    return "baseline" if name in BASELINE_NAMES else "member"


def _line(name: str, s: Mapping[str, Any], kind: str, scale: float = 1.0) -> Any:
    import plotly.graph_objects as go

    vals = [None if v is None else v * scale for v in s["values"]]
    style = {
        "ensemble": {"width": 3.5},
        "baseline": {"width": 1.5, "dash": "dash"},
        "member": {"width": 1.5},
    }.get(kind, {"width": 1.5})
    return go.Scatter(x=s["dates"], y=vals, mode="lines", name=name, line=style)


def _title(base: str, group: str) -> str:
    return f"{base}, {group}-day horizon" if group else base


def _line_figures(
    section: Mapping[Any, Any], kinds: Mapping[str, str], base: str, ytitle: str, scale: float, zero: bool
) -> list[Any]:
    import plotly.graph_objects as go

    figs = []
    for group, named in _groups(section).items():
        fig = go.Figure([_line(n, s, _kind(n, kinds), scale) for n, s in named.items()])
        if zero:
            fig.add_hline(y=0, line={"color": "#888", "width": 1})
        fig.update_layout(
            title=_title(base, group),
            yaxis_title=ytitle,
            height=420,
            hovermode="x unified",
            template="plotly_white",
        )
        figs.append(fig)
    return figs


def _coverage_figures(section: Mapping[Any, Any]) -> list[Any]:
    import plotly.graph_objects as go

    figs = []
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for group, levels in _groups(section).items():
        fig = go.Figure()
        for i, (lvl, s) in enumerate(levels.items()):
            color = palette[i % len(palette)]
            fig.add_trace(
                go.Scatter(
                    x=s["dates"],
                    y=[None if v is None else 100 * v for v in s["values"]],
                    mode="lines",
                    name=f"{lvl}% interval",
                    line={"color": color, "width": 2},
                )
            )
            try:
                fig.add_hline(
                    y=float(lvl),
                    line={"color": color, "dash": "dot", "width": 1},
                    annotation_text=f"nominal {lvl}%",
                )
            except ValueError:
                logger.warning("coverage level %r is not a number; no nominal line drawn", lvl)
        fig.update_layout(
            title=_title("Interval coverage (rolling share of realised returns inside)", group),
            yaxis_title="coverage, %",
            height=380,
            hovermode="x unified",
            template="plotly_white",
        )
        figs.append(fig)
    return figs


def _weights_figure(weights: Mapping[Any, Mapping[Any, Mapping[str, float]]]) -> Any:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    hs = list(weights)
    fig = make_subplots(
        rows=1, cols=len(hs), subplot_titles=[f"{h}-day horizon" for h in hs], shared_yaxes=True
    )
    members: list[str] = []
    for folds in weights.values():
        for mw in folds.values():
            members += [m for m in mw if m not in members]
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for j, h in enumerate(hs, start=1):
        folds = weights[h]
        labels = [str(f) for f in folds]
        for i, m in enumerate(members):
            fig.add_trace(
                go.Bar(
                    x=labels,
                    y=[float(folds[f].get(m, 0.0)) for f in folds],
                    name=m,
                    legendgroup=m,
                    showlegend=j == 1,
                    marker_color=palette[i % len(palette)],
                ),
                row=1,
                col=j,
            )
    fig.update_layout(
        barmode="stack",
        title="Learned ensemble weights per horizon and fold",
        yaxis_title="weight",
        height=400,
        template="plotly_white",
    )
    fig.update_xaxes(title_text="fold", type="category")
    return fig


# -- the page -----------------------------------------------------------------------------------------
def _sorted_metrics(df: pd.DataFrame, kinds: Mapping[str, str]) -> tuple[pd.DataFrame, list[str]]:
    order = {"ensemble": 0, "member": 1, "baseline": 2}
    k = [_kind(str(m), kinds) for m in df["model"]]
    key = pd.DataFrame(
        {"h": df["horizon"].astype(float), "k": [order.get(x, 1) for x in k], "i": range(len(df))}
    )
    pos = key.sort_values(["h", "k", "i"]).index
    return df.loc[pos].reset_index(drop=True), [k[i] for i in pos]


def write_report(result: Mapping[str, Any], directory: Path | str) -> Path:
    """Write ``report.html`` and the CSV/JSON tables of ``result`` (format: module docstring) into
    ``directory`` (created if missing); return the HTML's path."""
    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    if "title" not in result or "metrics" not in result:
        raise ValueError("result needs at least 'title' and 'metrics'")
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    data = jsonable(result)  # fails early, naming a value that JSON cannot hold
    rows = data["metrics"]
    kinds = _kinds(rows)

    metrics = metrics_frame(rows)
    metrics.to_csv(out / "metrics.csv", index=False)
    _write_json(out / "metrics.json", metrics.to_dict("records"))
    if data.get("weights"):
        wf = weights_frame(data["weights"])
        wf.to_csv(out / "weights.csv", index=False)
        _write_json(out / "weights.json", data["weights"])
    if data.get("folds"):
        pd.DataFrame(data["folds"]).to_csv(out / "folds.csv", index=False)
        _write_json(out / "folds.json", data["folds"])
    if data.get("actions"):
        pd.DataFrame(data["actions"]).to_csv(out / "actions.csv", index=False)
        _write_json(out / "actions.json", data["actions"])
    _write_json(out / "result.json", data)

    sections: list[tuple[str, list[Any] | str]] = []
    if data.get("equity"):
        sections.append(
            (
                "Equity curves (long-short, net of costs)",
                _line_figures(
                    data["equity"], kinds, "Cumulative net return", "cumulative return, %", 100.0, True
                ),
            )
        )
    if data.get("rolling_rank_ic"):
        sections.append(
            (
                "Rolling Rank IC",
                _line_figures(
                    data["rolling_rank_ic"], kinds, "Rolling mean of the daily Rank IC", "Rank IC", 1.0, True
                ),
            )
        )
    if data.get("coverage"):
        sections.append(("Interval coverage over time", _coverage_figures(data["coverage"])))
    if data.get("weights"):
        sections.append(("Ensemble weights", [_weights_figure(data["weights"])]))
    table, row_kinds = _sorted_metrics(metrics, kinds)
    sections.append(("Metrics", _html_table(table, row_kinds)))
    if data.get("actions"):
        sections.append(("Realised forward return by action", _html_table(pd.DataFrame(data["actions"]))))
    if data.get("folds"):
        sections.append(("Folds", _html_table(pd.DataFrame(data["folds"]))))

    config = {"displaylogo": False, "responsive": True}
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(str(data['title']))}</title>",
        f"<style>{_STYLE}</style>",
        # plotly.js inlined once: the file opens without a network
        f'<script type="text/javascript">{get_plotlyjs()}</script>',
        "</head><body>",
        f"<h1>{html.escape(str(data['title']))}</h1>",
    ]
    if data.get("notes"):
        parts.append(
            '<ul class="notes">' + "".join(f"<li>{html.escape(str(n))}</li>" for n in data["notes"]) + "</ul>"
        )
    if data.get("meta"):
        meta = pd.DataFrame({"setting": list(data["meta"]), "value": [str(v) for v in data["meta"].values()]})
        parts.append(_html_table(meta))
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [pio.to_html(f, full_html=False, include_plotlyjs=False, config=config) for f in content]
    parts.append("</body></html>")
    path = out / REPORT_NAME
    path.write_text("\n".join(parts), encoding="utf-8")
    logger.info("wrote the report to %s", path)
    return path
