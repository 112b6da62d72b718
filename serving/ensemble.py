"""The Ensemble deployment: calls the member deployments concurrently through DeploymentHandles and
combines their forecasts with the version's learned ensemble (``ensemble.scoring.combine``).

One forecast is one as-of date of the whole universe (the learned ensemble combines per-date z-scores
of the members, so it needs every ticker of the date): the prices are loaded once per data source
(``load_prices`` of the version's settings), the frame is ``scoring.prepare_frame`` and travels to
the members once as an object reference, and each member's forecasts come back from
``Member.predict``. Concurrent requests for the same (version, date) share one computation:
``@serve.batch`` groups them, and the result is cached for ``cache_ttl_s``.

A member that errors or does not answer within ``member_timeout_s`` is retried once when its replica
died (Serve routes the retry to a live replica), otherwise it is **left out** of the combination and
reported with the reason, in the response and in ``/api/health``. It is never replaced by anything
that invents numbers.

A per-ticker member (Prophet) also receives the prices the frame was prepared from, to refit its
models that are stale on the as-of date as ``jobs.score`` does. Recommendations name their drivers
(``top_features``) from the tree members' contributions (``Member.contributions``, combined by
``scoring.explain``), as ``jobs.score``'s do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import time
from collections import OrderedDict
from typing import Any

import pandas as pd
import ray
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve.handle import DeploymentHandle

from ensemble import scoring
from ensemble.data import schema
from ensemble.data.sources import load_prices
from ensemble.models import get_model_class
from ensemble.models.ensemble import VOL_COLUMN
from ensemble.predlog import PredictionLog
from ensemble.registry import ModelRegistry
from serving.members import model_id
from serving.schemas import error_body

logger = logging.getLogger("serving.ensemble")

_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)


class RequestError(Exception):
    def __init__(self, status: int, field: str | None, detail: str) -> None:
        super().__init__(detail)
        self.status, self.field, self.detail = status, field, detail


class LeftOutError(Exception):
    """A member left out of one forecast, with the reason."""


def _num(x: Any) -> float | None:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@serve.deployment(
    ray_actor_options={"num_cpus": 0.2},
    max_ongoing_requests=32,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Ensemble:
    def __init__(self, members: dict[str, DeploymentHandle], registry: str) -> None:
        self.members = dict(members)
        self.registry = ModelRegistry(registry)
        self.member_timeout_s = 60.0
        self.cache_ttl_s = 60.0
        self.prices_ttl_s = 600.0
        self.shards = 2
        self._versions: OrderedDict[str, scoring.LoadedVersion] = OrderedDict()
        self._data_end: dict[str, str | None] = {}  # version -> the last date its training read
        self._prices: dict[str, tuple[float, pd.DataFrame]] = {}
        self._prices_refs: dict[str, Any] = {}  # prices stamp -> ObjectRef (for the per-ticker refit)
        self._results: OrderedDict[tuple[str, ...], tuple[float, dict[str, Any]]] = OrderedDict()
        self._inflight: dict[tuple[str, ...], asyncio.Future[dict[str, Any]]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.left_out: dict[str, dict[str, Any]] = {}  # member -> {reason, version, at}
        self.retries: dict[str, int] = {}  # member -> calls retried after its replica died
        self.log_on, self.log_dir = True, None  # the prediction log (source "serve")
        self._plog: PredictionLog | None = None

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """``{"member_timeout_s", "cache_ttl_s", "prices_ttl_s", "shards", "versions": [...]}``: the
        versions are loaded (and their prices read) now rather than on the first request."""
        cfg = dict(user_config or {})
        self.member_timeout_s = float(cfg.get("member_timeout_s", self.member_timeout_s))
        self.cache_ttl_s = float(cfg.get("cache_ttl_s", self.cache_ttl_s))
        self.prices_ttl_s = float(cfg.get("prices_ttl_s", self.prices_ttl_s))
        self.shards = max(1, int(cfg.get("shards", self.shards)))
        log_on, log_dir = bool(cfg.get("log", self.log_on)), cfg.get("log_dir", self.log_dir)
        changed = (log_on, log_dir) != (self.log_on, self.log_dir)
        self.log_on, self.log_dir = log_on, log_dir  # before any await: requests see the new ones
        if changed and self._plog is not None:
            old, self._plog = self._plog, None
            await asyncio.to_thread(old.close, 30.0)  # what it acknowledged is written first
        await self.reconfigure_versions([str(v) for v in cfg.get("versions", [])])

    async def reconfigure_versions(self, versions: list[str]) -> dict[str, str]:
        """Load these versions (ids or aliases) and their prices now; {version: "ok" | problem}."""
        out = {}
        for v in versions:
            try:
                lv = await self.version(await asyncio.to_thread(self.registry.resolve, v))
                await self.prices(lv.settings)
                out[v] = "ok"
            except Exception as exc:  # reported by /api/health through the members and on first use
                logger.exception("ensemble: could not preload version %s", v)
                out[v] = f"{type(exc).__name__}: {exc}"
        return out

    # -- state ----------------------------------------------------------------------------------------
    async def version(self, vid: str) -> scoring.LoadedVersion:
        """The version's ensemble, preprocessor and settings (no member models: they live in the
        member deployments)."""
        if vid in self._versions:
            self._versions.move_to_end(vid)
            return self._versions[vid]
        lock = self._locks.setdefault(f"v:{vid}", asyncio.Lock())
        async with lock:
            if vid not in self._versions:
                lv = await asyncio.to_thread(load_head, self.registry, vid)
                self._data_end[vid] = await asyncio.to_thread(data_end, self.registry, vid)
                self._versions[vid] = lv
                while len(self._versions) > 3:
                    self._versions.popitem(last=False)
        return self._versions[vid]

    async def prices(self, settings: Any) -> tuple[str, pd.DataFrame]:
        """The contract table the version's data settings name, reloaded after ``prices_ttl_s``;
        returns (a stamp that changes when it is reloaded, prices)."""
        spec = {
            "data": settings.data.model_dump(mode="json"),
            "synthetic": settings.synthetic.model_dump(mode="json"),
            "postgres": settings.postgres.model_dump(mode="json"),
            "stocks": settings.training.training_stocks,
        }
        key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
        lock = self._locks.setdefault(f"p:{key}", asyncio.Lock())
        async with lock:
            hit = self._prices.get(key)
            if hit is None or time.monotonic() - hit[0] > self.prices_ttl_s:
                t0 = time.monotonic()
                prices, _ = await asyncio.to_thread(load_prices, settings)
                prices = prices.assign(ticker=prices["ticker"].astype(str))
                hit = (t0, prices)
                self._prices[key] = hit
                self._prices_refs = {k: r for k, r in self._prices_refs.items() if not k.startswith(key)}
                logger.info("ensemble: prices %s loaded in %.1f s", key, time.monotonic() - t0)
        return f"{key}.{hit[0]:.0f}", hit[1]

    # -- forecasting ----------------------------------------------------------------------------------
    async def forecast(self, req: dict[str, Any]) -> dict[str, Any]:
        """``req``: version (an id), tickers (None: all), as_of (ISO date or None), horizon (or None),
        history (bars for one ticker, or None). Returns the forecast or ``{"error": ...}``."""
        if not req.get("history"):  # a date already forecast: answered at once, without the batch wait
            hit = self._results.get((req["version"], str(req.get("as_of")), "-"))
            if hit is not None and time.monotonic() - hit[0] <= self.cache_ttl_s:
                try:
                    return await self._served(hit[1], req, self._select(hit[1], req))
                except RequestError as e:
                    return error_body(e.status, e.field, e.detail)
        return await self._batched(req)

    async def _served(self, uni: dict[str, Any], req: dict[str, Any], res: dict[str, Any]) -> dict[str, Any]:
        """``res``, with its forecasts logged (buffered: the request does not wait for the write;
        a logging problem is logged, never the request's failure). A request that pinned a version
        (an operator's check, arm ``pinned``) is not a forecast served to users: not logged."""
        if self.log_on and req.get("arm") != "pinned":
            try:
                await self._log(uni, req, res)
            except Exception:
                logger.exception("ensemble: could not log the forecasts of %s", uni.get("version"))
        return res

    async def _log(self, uni: dict[str, Any], req: dict[str, Any], res: dict[str, Any]) -> None:
        lv = self._versions.get(uni["version"])
        if lv is None:
            return
        scored = uni.get("scored")
        if scored is None:  # the universe's rows as jobs.score logs them, built once per universe,
            # off the event loop; only the log's writer thread reads it afterwards (never changed)
            scored = uni["scored"] = (await asyncio.to_thread(score_result, lv, uni)).frame
        served = [f["ticker"] for f in res["forecasts"] if "horizons" in f]
        if served:  # the selection and conversion run in the log's writer thread, not here
            if self._plog is None:
                self._plog = PredictionLog.from_settings(lv.settings, self.log_dir)
            h = req.get("horizon")
            self._plog.log(
                scored, version=uni["version"], source="serve+history" if req.get("history") else "serve",
                arm=req.get("arm"), tickers=served, horizons=None if h is None else [h], copy=False,
            )  # fmt: skip  # the universe's frame is cached and never changed

    def __del__(self) -> None:  # Serve calls it when the replica shuts down: flush the log
        if getattr(self, "_plog", None) is not None:
            self._plog.close(30.0)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _batched(self, reqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        async def one(req: dict[str, Any]) -> dict[str, Any]:
            try:
                uni = await self.universe(req["version"], req.get("as_of"), req.get("history"))
                return await self._served(uni, req, self._select(uni, req))
            except RequestError as e:
                return error_body(e.status, e.field, e.detail)
            except scoring.ScoringError as e:
                return error_body(422, "as_of", str(e))
            except Exception as e:  # one request's failure is its own, not its batch's
                logger.exception(
                    "ensemble: forecast failed for %s", {k: req.get(k) for k in ("version", "as_of")}
                )
                return error_body(500, None, f"{type(e).__name__}: {e}")

        return list(await asyncio.gather(*(one(r) for r in reqs)))

    async def universe(
        self, vid: str, as_of: str | None, history: list[dict[str, Any]] | None
    ) -> dict[str, Any]:
        hkey = (
            hashlib.sha256(json.dumps(history, sort_keys=True, default=str).encode()).hexdigest()[:16]
            if history
            else "-"
        )
        key = (vid, str(as_of), hkey)
        hit = self._results.get(key)
        if hit is not None and time.monotonic() - hit[0] <= self.cache_ttl_s:
            return hit[1]
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.exception() if not f.cancelled() else None)
        self._inflight[key] = fut
        try:
            uni = await self._compute(vid, as_of, history, hkey)
        except BaseException as exc:
            fut.set_exception(exc)
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(uni)
        if not uni["left_out"]:  # a partial forecast is not kept: the next request tries again
            self._results[key] = (time.monotonic(), uni)
            while len(self._results) > 16:
                self._results.popitem(last=False)
        return uni

    async def _compute(
        self, vid: str, as_of: str | None, history: list[dict[str, Any]] | None, hkey: str
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        try:
            lv = await self.version(vid)
        except Exception as exc:
            raise RequestError(
                503, None, f"version {vid} cannot be loaded: {type(exc).__name__}: {exc}"
            ) from exc
        stamp, prices = await self.prices(lv.settings)
        custom = None
        if history:
            prices, custom = _with_history(prices, history)
        dates = pd.DatetimeIndex(prices["date"].unique()).sort_values()
        if as_of is None:
            day = pd.Timestamp(custom["last"]) if custom else dates[-1]
        else:
            day = pd.Timestamp(as_of)
            if day not in dates:
                lo, hi = dates[0].date(), dates[-1].date()
                raise RequestError(422, "as_of", f"no data on {day.date()} (trading dates {lo} .. {hi})")
        try:
            frame, frame_skipped = await asyncio.to_thread(scoring.prepare_frame, lv, prices, day)
        except Exception as exc:
            if not custom:
                raise
            raise RequestError(422, "history", f"{custom['ticker']}: {type(exc).__name__}: {exc}") from exc
        if custom and custom["ticker"] in frame_skipped:
            raise RequestError(422, "history", f"{custom['ticker']}: {frame_skipped[custom['ticker']]}")
        frame_key = f"{stamp}|{day.date()}|{hkey}"
        box = [ray.put(frame)]
        names = [m for m in lv.ensemble.members_]
        if any(get_model_class(m).per_ticker for m in names if m in self.members):
            if custom:
                prices_ref = ray.put(prices)
            else:
                prices_ref = self._prices_refs.get(stamp)
                if prices_ref is None:
                    prices_ref = self._prices_refs[stamp] = ray.put(prices)
            refit = (box + [prices_ref], f"{day.date()}|{hkey}")
        else:
            refit = (box, frame_key)
        deadline = time.monotonic() + self.member_timeout_s
        calls = {
            m: self._member(lv, m, day, frame_key, box, deadline, refit) for m in names if m in self.members
        }
        left_out: dict[str, str] = {
            m: "no deployment serves this member" for m in names if m not in self.members
        }
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        member_preds: dict[str, pd.DataFrame] = {}
        skipped: dict[str, dict[str, str]] = {}
        for name, res in zip(calls, results, strict=True):
            if isinstance(res, BaseException):
                left_out[name] = str(res) if isinstance(res, LeftOutError) else f"{type(res).__name__}: {res}"
                continue
            member_preds[name], skipped[name] = res
        now = time.time()
        for name in names:
            if name in left_out:
                self.left_out[name] = {"reason": left_out[name], "version": vid, "at": now}
            else:
                self.left_out.pop(name, None)
        if not member_preds:
            raise RequestError(503, None, f"no member could forecast: {left_out}")
        combined = await asyncio.to_thread(scoring.combine, lv, member_preds, frame)
        combined = combined[pd.to_datetime(combined["date"]) == day]
        at = frame.loc[frame["date"] == day, ["date", "ticker", "close", VOL_COLUMN]]
        members_view = {m: _member_returns(lv, m, p, day) for m, p in member_preds.items()}
        return {
            "version": lv.version,
            "as_of": str(day.date()),
            "horizons": list(lv.horizons),
            "levels": [float(a) for a in lv.ensemble.levels],
            "rows": combined.assign(ticker=combined["ticker"].astype(str)).set_index("ticker"),
            "members": members_view,
            "member_preds": member_preds,
            "at": at,
            "frame_box": box,
            "explained": {},  # horizon -> (contributions, members explained, left out), on first use
            "prices": prices,
            "left_out": left_out,
            "skipped": {
                **{m: s for m, s in skipped.items() if s},
                **({"features": frame_skipped} if frame_skipped else {}),
            },
            "universe": sorted(prices.loc[prices["date"] == day, "ticker"].unique()),
            "seconds": time.perf_counter() - t0,
        }

    async def _member(
        self,
        lv: scoring.LoadedVersion,
        name: str,
        day: pd.Timestamp,
        frame_key: str,
        box: list[Any],
        deadline: float,
        refit: tuple[list[Any], str],
    ) -> tuple[pd.DataFrame, dict[str, str]]:
        per_ticker = get_model_class(name).per_ticker
        mids = (
            [model_id(lv.version, s, self.shards) for s in range(self.shards)]
            if per_ticker
            else [model_id(lv.version)]
        )
        args = (str(day.date()), frame_key, *refit) if per_ticker else (str(day.date()), frame_key, box)
        parts = await asyncio.gather(*(self._call(name, mid, "predict", args, deadline) for mid in mids))
        preds = pd.concat([p["preds"] for p in parts], ignore_index=True)
        skipped: dict[str, str] = {}
        for p in parts:
            skipped.update(p["skipped"])
        return preds, skipped

    async def _call(
        self, name: str, mid: str, method: str, args: tuple[Any, ...], deadline: float
    ) -> dict[str, Any]:
        handle = self.members[name].options(multiplexed_model_id=mid)
        where = f" ({mid.split('@', 1)[1]})" if "@" in mid else ""
        for attempt in (1, 2):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LeftOutError(f"timed out after {self.member_timeout_s:.0f} s{where}")
            try:
                res: dict[str, Any] = await asyncio.wait_for(
                    _await(getattr(handle, method).remote(*args)), remaining
                )
                return res
            except TimeoutError:
                raise LeftOutError(f"timed out after {self.member_timeout_s:.0f} s{where}") from None
            except _REPLICA_GONE as exc:
                self.retries[name] = self.retries.get(name, 0) + 1
                if attempt == 2:
                    raise LeftOutError(f"replica unavailable twice{where}: {type(exc).__name__}") from exc
                logger.warning(
                    "ensemble: %s replica gone (%s); retrying on another", name, type(exc).__name__
                )
            except Exception as exc:
                cause = getattr(exc, "cause", None) or exc
                raise LeftOutError(f"{type(cause).__name__}: {_short(cause)}{where}") from exc
        raise AssertionError("unreachable")

    def _select(self, uni: dict[str, Any], req: dict[str, Any]) -> dict[str, Any]:
        horizons = uni["horizons"]
        h = req.get("horizon")
        if h is not None and h not in horizons:
            raise RequestError(422, "horizon", f"unknown horizon {h}; this version forecasts {horizons}")
        hs = [h] if h is not None else horizons
        tickers = req.get("tickers") or list(uni["rows"].index)
        universe = set(uni["universe"])
        unknown = [t for t in tickers if t not in universe and t not in uni["rows"].index]
        if unknown and not req.get("partial", False):
            raise RequestError(404, "ticker" if len(tickers) == 1 else "tickers",
                               f"unknown ticker(s) {unknown[:10]} on {uni['as_of']}")  # fmt: skip
        out = []
        for t in tickers:
            if t not in uni["rows"].index:
                why = uni["skipped"].get("features", {}).get(t, "no member could forecast it")
                out.append({"ticker": t, "error": f"not scored: {why}"})
                continue
            row = uni["rows"].loc[t]
            per_h = {}
            for hh in hs:
                per_h[str(hh)] = {
                    "ensemble": _num(row.get(f"pred_h{hh}")),
                    "excess": _num(row.get(f"excess_h{hh}")),
                    "interval": {
                        f"{round(a * 100)}": [
                            _num(row.get(f"lo{round(a * 100)}_h{hh}")),
                            _num(row.get(f"hi{round(a * 100)}_h{hh}")),
                        ]
                        for a in uni["levels"]
                    },
                    "confidence": _num(row.get(f"confidence_h{hh}")),
                    "n_models": int(_num(row.get(f"n_models_h{hh}")) or 0),
                    "members": {m: _num(v.get(t, {}).get(f"pred_h{hh}")) for m, v in uni["members"].items()},
                }
            skipped = {m: s[t] for m, s in uni["skipped"].items() if t in s}
            out.append({"ticker": t, "horizons": per_h, **({"skipped": skipped} if skipped else {})})
        return {
            "version": uni["version"],
            "as_of": uni["as_of"],
            **point_in_time(uni["as_of"], self._data_end.get(uni["version"])),
            "forecasts": out,
            "left_out": uni["left_out"],
            "members": sorted(uni["members"]),
        }

    # -- introspection --------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "versions": list(self._versions),
            "left_out": self.left_out,
            "retries": dict(self.retries),
            "log": (self._plog.stats() if self._plog is not None else None) if self.log_on else "off",
        }

    async def recommendations(self, vid: str, as_of: str | None, top: int) -> dict[str, Any]:
        """The date's recommendations (``ensemble.recommend.recommend`` over the universe's forecast,
        as ``jobs.score`` makes them), best ``top`` first."""
        from ensemble.recommend import recommend

        try:
            uni = await self.universe(vid, as_of, None)
        except RequestError as e:
            return error_body(e.status, "date" if e.field == "as_of" else e.field, e.detail)
        lv = await self.version(vid)
        result = score_result(lv, uni)
        horizon = lv.settings.action_horizon()
        contributions, explained, unexplained = await self.explain(lv, uni, result, horizon)
        result.contributions, result.explain_horizon = contributions, horizon
        day = pd.Timestamp(uni["as_of"])
        upto = uni["prices"].loc[uni["prices"]["date"] <= day]
        recs = await asyncio.to_thread(recommend, result, upto, lv.settings.recommend, horizon)
        rows = recs.head(top).drop(columns=["as_of", "version"], errors="ignore")
        records = [
            {k: (_num(v) if isinstance(v, float) else v) for k, v in r.items()}
            for r in rows.to_dict("records")
        ]
        counts = recs["action"].value_counts().to_dict()
        return {"version": uni["version"], "as_of": uni["as_of"], "horizon": horizon, "left_out": uni["left_out"],
                **point_in_time(uni["as_of"], self._data_end.get(uni["version"])),
                "actions": {str(k): int(v) for k, v in counts.items()}, "recommendations": records,
                "explained_by": explained, **({"unexplained": unexplained} if unexplained else {})}  # fmt: skip

    async def explain(
        self, lv: scoring.LoadedVersion, uni: dict[str, Any], result: scoring.ScoreResult, horizon: int
    ) -> tuple[pd.DataFrame, list[str], dict[str, str]]:
        """The scored tickers' feature contributions at ``horizon`` (``scoring.explain`` over each tree
        member's ``Member.contributions``), as ``scoring.score(explain_horizon=...)`` computes them;
        cached with the forecast. Returns (contributions, members explained, {member: why not})."""
        hit = uni["explained"].get(horizon)
        if hit is not None:
            return hit  # type: ignore[no-any-return]
        scored = set(result.frame["ticker"].astype(str))
        frame_box = uni["frame_box"]
        deadline = time.monotonic() + self.member_timeout_s
        calls: dict[str, Any] = {}
        for m, p in uni["member_preds"].items():
            if m in self.members and hasattr(get_model_class(m), "contributions"):
                tickers = sorted(scored & set(p["ticker"].astype(str)))
                args = (frame_box, horizon, tickers)
                calls[m] = self._call(m, model_id(lv.version), "contributions", args, deadline)
        results = await asyncio.gather(*calls.values(), return_exceptions=True)
        parts: dict[str, pd.DataFrame | None] = {}
        unexplained: dict[str, str] = {}
        for m, r in zip(calls, results, strict=True):
            if isinstance(r, BaseException):
                unexplained[m] = str(r) if isinstance(r, LeftOutError) else f"{type(r).__name__}: {r}"
                logger.warning("ensemble: %s contributions unavailable: %s", m, unexplained[m])
            else:
                parts[m] = r["contributions"]
        frame = await frame_box[0]
        frame = frame.loc[frame["ticker"].astype(str).isin(scored)]
        contributions = await asyncio.to_thread(
            scoring.explain, lv, uni["member_preds"], frame, horizon, parts
        )
        out = (contributions, sorted(m for m, c in parts.items() if c is not None), unexplained)
        if not unexplained:
            uni["explained"][horizon] = out
        return out


def score_result(lv: scoring.LoadedVersion, uni: dict[str, Any]) -> scoring.ScoreResult:
    """The universe's forecast as ``scoring.score`` returns it (the frame of scored tickers with the
    ensemble's and each member's forecasts), for the library's recommendations."""
    rows = uni["rows"].reset_index()
    hcols = [f"pred_h{h}" for h in lv.ensemble.horizons]
    have = rows[hcols].notna().any(axis=1)
    out = uni["at"].assign(ticker=uni["at"]["ticker"].astype(str))
    out = out.merge(rows.loc[have].drop(columns=["date"]), on="ticker", how="inner")
    for name, p in uni["member_preds"].items():
        if name in lv.ensemble.members_:
            r = lv.ensemble.member_returns(name, p).drop(columns=["date"])
            r = r.assign(ticker=r["ticker"].astype(str))
            out = out.merge(r.rename(columns={f"pred_h{h}": f"{name}_h{h}" for h in lv.ensemble.horizons}),
                            on="ticker", how="left")  # fmt: skip
    return scoring.ScoreResult(
        as_of=pd.Timestamp(uni["as_of"]),
        version=uni["version"],
        frame=out.sort_values("ticker").reset_index(drop=True),
        members=dict(uni["member_preds"]),
        skipped=dict(uni["skipped"]),
        degraded=dict(uni["left_out"]),
    )


def data_end(registry: ModelRegistry, vid: str) -> str | None:
    """The last date a version's training read (its validation end), or None when not recorded."""
    if "training" not in registry.manifest(vid)["extras"]:
        return None
    end = registry.load_extra(vid, "training").get("split", {}).get("valid_end")
    return str(end)[:10] if end else None


def point_in_time(as_of: str, end: str | None) -> dict[str, Any]:
    """``data_end`` and ``point_in_time``: whether a forecast as of ``as_of`` used nothing after it.
    A version read prices through its data end, so a forecast for an earlier date is in-sample
    (its members were fitted, early-stopped or calibrated on what came after that date)."""
    return {"data_end": end, "point_in_time": None if end is None else str(as_of) >= end}


def load_head(registry: ModelRegistry, vid: str) -> scoring.LoadedVersion:
    """A version's settings, preprocessor and ensemble, verified by the registry, without members
    (they live in the member deployments)."""
    return scoring.load_version(registry, vid, members=[])


async def _await(resp: Any) -> Any:
    return await resp


def _short(exc: BaseException, n: int = 300) -> str:
    s = str(exc).strip().splitlines()
    msg = s[-1] if s else ""
    return msg[:n]


def _member_returns(
    lv: scoring.LoadedVersion, name: str, preds: pd.DataFrame, day: pd.Timestamp
) -> dict[str, dict[str, float]]:
    """Each member's forecast of ``day`` by ticker, in return units (the member's own calibration in
    the version's ensemble), so members and the ensemble are comparable."""
    p = preds[pd.to_datetime(preds["date"]) == day]
    try:
        p = lv.ensemble.member_returns(name, p)
    except Exception:  # a member the ensemble does not know: its raw forecast
        logger.warning("ensemble: %s has no calibration in %s; raw forecast reported", name, lv.version)
    p = p.assign(ticker=p["ticker"].astype(str)).set_index("ticker")
    cols = [c for c in p.columns if c.startswith("pred_h")]
    return p[cols].to_dict(orient="index")


def _with_history(prices: pd.DataFrame, history: list[dict[str, Any]]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """``prices`` with one ticker's rows replaced by the caller's bars, validated against the data
    contract (a violation is a 422 naming ``history``)."""
    ticker = str(history[0]["ticker"])
    bars = pd.DataFrame(history)
    bars["date"] = pd.to_datetime(bars["date"])
    dates = set(prices["date"].unique())
    off = sorted(d for d in bars["date"] if d not in dates)
    if off:
        raise RequestError(
            422,
            "history",
            f"{ticker}: {len(off)} bar(s) on dates with no data in the universe, first {off[0].date()}",
        )
    rest = prices[prices["ticker"] != ticker]
    others = [c for c in prices.columns if c not in bars.columns]
    # the stored ticker's other columns (sector, fundamentals, sentiment) where its dates match
    stored = prices.loc[prices["ticker"] == ticker, ["date", *[c for c in others if c != "ticker"]]]
    bars = bars.merge(stored, on="date", how="left").assign(ticker=ticker)
    if "sector" in bars and bars["sector"].isna().all() and not stored.empty:
        bars["sector"] = stored["sector"].iloc[-1]
    merged = pd.concat([rest, bars[list(prices.columns)]], ignore_index=True)
    merged = merged.astype(
        {c: prices[c].dtype for c in prices.columns if c in ("open", "high", "low", "close", "volume")}
    )
    merged = merged.sort_values(["ticker", "date"], kind="stable").reset_index(drop=True)
    try:
        merged = schema.validate(merged)
    except Exception as exc:
        raise RequestError(422, "history", f"{ticker}: {exc}") from exc
    return merged, {"ticker": ticker, "last": str(bars["date"].max().date())}
