"""The HTTP API: a FastAPI app served by the ``Api`` ingress deployment (``@serve.ingress``).

Routes (OpenAPI at ``/docs`` and ``/openapi.json``)::

    GET  /api/health                     per member: healthy / degraded / failed, its loaded version
    POST /api/predict                    one ticker (optionally with its own recent OHLCV history)
    POST /api/predict/batch              many tickers, one call
    GET  /api/recommendations?date=&top= the day's recommendations (ensemble.recommend)
    GET  /api/models                     versions, aliases, metrics, A/B arms and per-arm counts
                                         (summed over every ingress replica)
    POST /api/models/{version}/promote   admin
    POST /api/rollback                   admin
    PUT  /api/ab                         admin: traffic split between production and a version

Admin routes need ``X-API-Key`` equal to the environment variable ``ENSEMBLE_API_KEY`` (its name:
``serving.api_key_env``); without it, or when the server has no key configured, they answer 401. Ray's
token authentication does not cover Serve's HTTP proxy.

What is served is ``reconfigure(user_config)``: ``{"version": alias or id, "ab": {"version", "weight"}}``
(default: the ``production`` alias, and the A/B split set through the API, stored in the registry at
``serving/ab.json`` with its history under the ``ab`` alias).
Promotion, rollback and a new A/B split change the registry first, have every member replica load the
version (a version that does not load is refused and nothing changes), then every ingress replica
re-reads what to serve (``refresh``, broadcast): no replica restarts. Every response names the
version and the A/B arm that produced it (body and ``X-Model-Version`` / ``X-AB-Arm`` headers).
A predict or batch request that names a ``version`` (admin key required) is scored by that version,
outside the A/B split (arm ``pinned``): ``jobs.deploy`` checks a version through the running service
this way before it promotes it.
"""

import asyncio
import hmac
import json
import logging
import os
import random
import time
from collections import Counter
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, Header, HTTPException, Path, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray import serve
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError
from ray.serve import metrics as serve_metrics
from ray.serve.handle import DeploymentHandle

from ensemble.monitor import latest_report, report_summary
from ensemble.registry import ModelRegistry
from ensemble.registry.errors import RegistryError, VersionNotFoundError
from serving.schemas import ABRequest, BatchRequest, Day, PredictRequest, PromoteRequest, RollbackRequest

logger = logging.getLogger("serving.api")

AB_ALIAS = "ab"
AB_FILE = ("serving", "ab.json")
VERSION_PARAM = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"

app = FastAPI(
    title="ensemble-forecast",
    description="Stock-return forecasts from six models and their learned ensemble (Ray Serve).",
    version="1",
)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field (``loc``) and what is wrong with it. The offending input is not echoed:
    a NaN or an infinity in it would make the error itself unserialisable."""
    errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
    return JSONResponse(status_code=422, content={"detail": errors})


async def _await(resp: Any) -> Any:
    return await resp


_REPLICA_GONE = (ActorDiedError, ActorUnavailableError, RayActorError)


async def _retried(call: Any, *args: Any) -> Any:
    """``call.remote(*args)``, once more if the replica that took it died (Serve routes the retry to a
    live replica, or waits for the replacement): the ensemble's calls are reads, safe to repeat."""
    try:
        return await call.remote(*args)
    except _REPLICA_GONE as exc:
        logger.warning("api: the ensemble replica died (%s); retrying the call once", type(exc).__name__)
        return await call.remote(*args)


KEY_ENV_VAR = "ENSEMBLE_API_KEY_ENV"  # names the variable holding the key; set by Api.__init__


def require_admin(x_api_key: Annotated[str | None, Header()] = None) -> None:
    """401 unless ``X-API-Key`` equals the key in the environment (and one is configured); checked
    before the request body is read."""
    # module state does not survive Serve's by-value pickling of the routes: read the process env
    expected = os.environ.get(os.environ.get(KEY_ENV_VAR, "ENSEMBLE_API_KEY"), "")
    if not expected or not x_api_key or not hmac.compare_digest(x_api_key.encode(), expected.encode()):
        raise HTTPException(
            401,
            "admin route: a valid X-API-Key header is required",
            headers={"WWW-Authenticate": "X-API-Key"},
        )


ADMIN = [Depends(require_admin)]
MONITOR_REFRESH_S = 15.0  # /api/health re-reads the latest monitoring report at most this often
PINNED_ARM = "pinned"  # a forecast by the version a request named (admin), outside the A/B split


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(app)
class Api:
    def __init__(
        self,
        ensemble: DeploymentHandle,
        members: dict[str, DeploymentHandle],
        registry: str,
        api_key_env: str = "ENSEMBLE_API_KEY",
        shards: int = 2,
        recommend_horizon: int | None = None,
    ) -> None:
        self.ensemble = ensemble
        self.members = dict(members)
        self.registry = ModelRegistry(registry)
        self.api_key_env = api_key_env
        os.environ[KEY_ENV_VAR] = api_key_env
        self.shards = shards
        self.recommend_horizon = recommend_horizon
        self.config: dict[str, Any] = {"version": "production"}
        self.arms: list[tuple[str, str, float]] = []  # (arm, version id, weight)
        self.counts: Counter[str] = Counter()
        self._mon: tuple[float, dict[str, Any]] | None = None  # (read at, the monitoring section)
        # Prometheus, through Ray's metrics export (prefixed ray_; Serve adds deployment and replica)
        self.m_forecasts = serve_metrics.Counter(
            "ensemble_forecasts", description="forecast requests answered, by version and A/B arm",
            tag_keys=("version", "arm"),
        )  # fmt: skip
        self.m_alerts = serve_metrics.Gauge(
            "ensemble_monitoring_alerts", description="alerts in the latest monitoring report",
            tag_keys=("version",),
        )  # fmt: skip
        self.m_rank_ic = serve_metrics.Gauge(
            "ensemble_rolling_rank_ic", description="rolling Rank IC of the logged forecasts (monitoring)",
            tag_keys=("version", "arm", "horizon", "model"),
        )  # fmt: skip
        self.m_psi = serve_metrics.Gauge(
            "ensemble_drift_psi", description="population stability index of a model input (monitoring)",
            tag_keys=("version", "feature"),
        )  # fmt: skip

    # -- what is served --------------------------------------------------------------------------------
    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        self.config = {"version": "production", **dict(user_config or {})}
        await self.refresh()

    async def refresh(self) -> list[tuple[str, str, float]]:
        """Resolve what to serve from the user_config and the registry: arm A the configured version
        (an alias follows promotions), arm B the A/B split (the user_config's, else the registry's)."""
        a = await asyncio.to_thread(self.registry.resolve, str(self.config["version"]))
        ab = self.config.get("ab")
        b: tuple[str, float] | None = None
        if ab:
            b = (await asyncio.to_thread(self.registry.resolve, str(ab["version"])), float(ab["weight"]))
        else:
            b = await asyncio.to_thread(self._stored_ab)
        arms = [("A", a, 1.0)]
        if b is not None and b[1] > 0 and b[0] != a:
            arms = [("A", a, 1.0 - b[1]), ("B", b[0], b[1])]
        if arms != self.arms:
            logger.info("serving %s", arms)
        self.arms = arms
        return arms

    def _stored_ab(self) -> tuple[str, float] | None:
        """The A/B split set through the API: ``<registry>/serving/ab.json`` (the ``ab`` alias keeps
        its history)."""
        path = self.registry.io.p(*AB_FILE)
        if not self.registry.io.exists(path):
            return None
        doc = json.loads(self.registry.io.read_bytes(path))
        return str(doc["version"]), float(doc["weight"])

    def _store_ab(self, version: str, weight: float) -> None:
        self.registry.set_alias(AB_ALIAS, version, f"ab weight={weight:g}")
        doc = {"version": version, "weight": weight, "at": time.time()}
        self.registry.io.replace_bytes(self.registry.io.p(*AB_FILE), json.dumps(doc).encode())

    def _pick(self) -> tuple[str, str]:
        if not self.arms:
            raise HTTPException(503, "no version is being served")
        r = random.random()
        for arm, version, weight in self.arms:
            r -= weight
            if r < 0:
                return arm, version
        return self.arms[0][0], self.arms[0][1]

    def _stamp(self, response: Response, version: str, arm: str) -> None:
        response.headers["X-Model-Version"] = version
        response.headers["X-AB-Arm"] = arm

    def _serving(self) -> dict[str, Any]:
        return {arm: {"version": v, "weight": w} for arm, v, w in self.arms}

    # -- admin -----------------------------------------------------------------------------------------
    async def _load_everywhere(self, version: str) -> dict[str, Any]:
        """Every member replica loads ``version`` (broadcast); returns {member: problem} for failures."""

        async def one(name: str, h: DeploymentHandle) -> tuple[str, list[Any]]:
            resp = h.broadcast("preload", [version], self.shards)
            return name, await resp.results_async(timeout_s=600, return_exceptions=True)

        out = await asyncio.gather(*(one(n, h) for n, h in self.members.items()))
        problems: dict[str, Any] = {}
        for name, results in out:
            for r in results:
                if isinstance(r, BaseException):
                    problems[name] = f"{type(r).__name__}: {r}"
                elif r.get(version) != "ok":
                    problems[name] = r
        await self.ensemble.broadcast("reconfigure_versions", [version]).results_async(
            timeout_s=600, return_exceptions=True
        )
        return problems

    async def arm_counts(self) -> dict[str, int]:
        """This replica's answered forecasts per A/B arm (``/api/models`` sums every replica's)."""
        return dict(self.counts)

    async def _counts_everywhere(self) -> tuple[dict[str, int], int]:
        """Per-arm counts summed over every ingress replica (broadcast), and how many answered; this
        replica's own counts when none can be asked."""
        ctx = serve.get_replica_context()
        me = serve.get_deployment_handle(ctx.deployment, ctx.app_name)
        parts = await me.broadcast("arm_counts").results_async(timeout_s=30, return_exceptions=True)
        total: Counter[str] = Counter()
        answered = 0
        for part in parts:
            if isinstance(part, dict):
                total.update(part)
                answered += 1
        return (dict(total), answered) if answered else (dict(self.counts), 1)

    async def _refresh_everywhere(self) -> None:
        ctx = serve.get_replica_context()
        me = serve.get_deployment_handle(ctx.deployment, ctx.app_name)
        await me.broadcast("refresh").results_async(timeout_s=60, return_exceptions=True)
        await self.refresh()

    async def _monitoring(self, version: str) -> dict[str, Any]:
        """The latest ``jobs.monitor`` report's summary (``ensemble.monitor.report_summary``), re-read
        at most every MONITOR_REFRESH_S; its alerts are logged once and exported as gauges. Alerts
        do not make the service unhealthy: they say the forecasts need attention, not that it is down."""
        now = time.monotonic()
        if self._mon is None or now - self._mon[0] > MONITOR_REFRESH_S:
            previous = self._mon[1].get("report") if self._mon else None
            try:
                section = await asyncio.to_thread(self._read_monitoring, version)
            except Exception as exc:  # a damaged report is reported, never the health check's failure
                section = {"status": "unreadable", "alerts": [], "detail": f"{type(exc).__name__}: {exc}"}
            if section.get("report") and section["report"] != previous:
                for a in section["alerts"]:
                    logger.warning("monitoring alert (%s): %s: %s = %s (threshold %s)", section["report"],
                                   a["rule"], a["subject"], a["value"], a["threshold"])  # fmt: skip
                self._export(section)
            self._mon = (now, section)
        return self._mon[1]

    def _read_monitoring(self, version: str) -> dict[str, Any]:
        where = self.config.get("monitor_dir")
        if not where:
            cfg = self.registry.manifest(version).get("config", {})
            where = cfg.get("monitoring", {}).get("out_dir", "artifacts/monitor")
        found = latest_report(where)
        if found is None:
            return {"status": "no report", "report": None, "alerts": [],
                    "detail": f"no python -m jobs.monitor report in {where} yet"}  # fmt: skip
        return report_summary(*found)

    def _export(self, section: dict[str, Any]) -> None:
        v = str(section.get("version"))
        self.m_alerts.set(len(section["alerts"]), tags={"version": v})
        for r in section["rank_ic"]:
            if r.get("rank_ic") is not None:
                tags = {k: str(r[k]) for k in ("version", "arm", "horizon", "model")}
                self.m_rank_ic.set(float(r["rank_ic"]), tags=tags)
        for r in section["drift"]:
            if r.get("psi") is not None:
                self.m_psi.set(float(r["psi"]), tags={"version": v, "feature": str(r["subject"])})

    def _resolve(self, version: str) -> str:
        try:
            return self.registry.resolve(version)
        except VersionNotFoundError as exc:
            raise HTTPException(404, {"field": "version", "detail": str(exc)}) from None

    # -- routes ----------------------------------------------------------------------------------------
    @app.get("/api/health")
    async def health(self, response: Response) -> dict[str, Any]:
        if not self.arms:
            await self.refresh()
        arm, version = self.arms[0][0], self.arms[0][1]

        async def status(name: str, h: DeploymentHandle) -> tuple[str, Any]:
            try:
                return name, await asyncio.wait_for(_await(h.status.remote()), 10)
            except Exception as exc:
                return name, exc

        results = dict(await asyncio.gather(*(status(n, h) for n, h in self.members.items())))
        try:
            ens = await asyncio.wait_for(_await(self.ensemble.status.remote()), 10)
        except Exception as exc:
            ens = {"error": f"{type(exc).__name__}: {exc}", "left_out": {}}
        left_out = ens.get("left_out", {})
        models: dict[str, Any] = {}
        for name, st in results.items():
            if isinstance(st, BaseException):
                models[name] = {"status": "failed", "version": None, "detail": f"{type(st).__name__}: {st}"}
                continue
            loaded = sorted({m.split("@", 1)[0] for m in st["loaded"]})
            entry = {"version": version if version in loaded else (loaded[-1] if loaded else None)}
            if not st["healthy"]:
                models[name] = {"status": "failed", **entry, "detail": st["detail"]}
            elif name in left_out and left_out[name].get("version") == version:  # not a pinned check's
                models[name] = {"status": "degraded", **entry, "detail": left_out[name]["reason"]}
            else:
                models[name] = {"status": "healthy", **entry}
        loaded_models = sorted(n for n, m in models.items() if m["status"] == "healthy")
        healthy = "error" not in ens and len(loaded_models) == len(models)
        self._stamp(response, version, arm)
        return {
            "healthy": healthy,
            "status": "healthy" if healthy else ("failed" if not loaded_models else "degraded"),
            "version": version,
            "arm": arm,
            "serving": self._serving(),
            "loaded_models": loaded_models,
            "fallback_models": [],  # never: a failed member is left out, not replaced
            "models": models,
            "retries": ens.get("retries", {}),  # member calls the ensemble retried after a replica died
            "monitoring": {**await self._monitoring(version), "prediction_log": ens.get("log")},
            **({"ensemble": ens["error"]} if "error" in ens else {}),
        }

    async def _forecast(
        self, req: dict[str, Any], response: Response, pinned: str | None = None, key: str | None = None
    ) -> tuple[dict[str, Any], str]:
        """The ensemble's forecast by the version of an A/B arm, or of ``pinned`` (admin only: the
        key is checked first; arm ``pinned``, not counted in the arms' counts)."""
        if pinned is not None:
            require_admin(key)
            arm, version = PINNED_ARM, await asyncio.to_thread(self._resolve, pinned)
        else:
            arm, version = self._pick()
        res = await _retried(self.ensemble.forecast, {**req, "version": version, "arm": arm})
        if "error" in res:
            e = res["error"]
            raise HTTPException(e["status"], {"field": e["field"], "detail": e["detail"]})
        if pinned is None:
            self.counts[arm] += 1
        self.m_forecasts.inc(tags={"version": res["version"], "arm": arm})
        self._stamp(response, res["version"], arm)
        return res, arm

    @app.post("/api/predict")
    async def predict(
        self, req: PredictRequest, response: Response, x_api_key: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        history = None
        if req.history:
            history = [{**b.model_dump(), "ticker": req.ticker} for b in req.history]
        body = {
            "tickers": [req.ticker],
            "as_of": req.as_of.isoformat() if req.as_of else None,
            "horizon": req.horizon,
            "history": history,
        }
        res, arm = await self._forecast(body, response, req.version, x_api_key)
        return {
            "version": res["version"],
            "arm": arm,
            "as_of": res["as_of"],
            "point_in_time": res.get("point_in_time"),
            "data_end": res.get("data_end"),
            "forecast": res["forecasts"][0],
            "members": res["members"],
            "left_out": res["left_out"],
        }

    @app.post("/api/predict/batch")
    async def predict_batch(
        self, req: BatchRequest, response: Response, x_api_key: Annotated[str | None, Header()] = None
    ) -> dict[str, Any]:
        body = {"tickers": req.tickers, "as_of": req.as_of.isoformat() if req.as_of else None,
                "horizon": req.horizon, "history": None}  # fmt: skip
        res, arm = await self._forecast(body, response, req.version, x_api_key)
        return {"arm": arm, **res}

    @app.get("/api/recommendations")
    async def recommendations(
        self,
        response: Response,
        date: Annotated[Day | None, Query(description="as-of date; latest when absent")] = None,
        top: Annotated[int, Query(ge=1, le=500)] = 10,
    ) -> dict[str, Any]:
        arm, version = self._pick()
        res = await _retried(self.ensemble.recommendations, version, date.isoformat() if date else None, top)
        if "error" in res:
            e = res["error"]
            raise HTTPException(e["status"], {"field": e["field"], "detail": e["detail"]})
        self.counts[arm] += 1
        self._stamp(response, res["version"], arm)
        return {"arm": arm, **res}

    @app.get("/api/models")
    async def models(self, response: Response) -> dict[str, Any]:
        if not self.arms:
            await self.refresh()

        def read() -> dict[str, Any]:
            out = []
            for v in self.registry.list_versions():
                try:
                    man = self.registry.manifest(v)
                except RegistryError as exc:
                    out.append({"version": v, "error": str(exc)})
                    continue
                ens = man.get("metrics", {}).get("ensemble", {})
                out.append({
                    "version": v,
                    "created_at": man.get("created_at"),
                    "models": man.get("models", []),
                    "metrics": {k: x for k, x in ens.items() if k.startswith("valid_rank_ic_h")},
                    "notes": man.get("notes", []),
                })  # fmt: skip
            return {"versions": out, "aliases": self.registry.aliases(),
                    "history": self.registry.alias_history()[-20:]}  # fmt: skip

        data = await asyncio.to_thread(read)
        counts, replicas = await self._counts_everywhere()
        arm, version = self.arms[0][0], self.arms[0][1]
        self._stamp(response, version, arm)
        return {"version": version, "arm": arm, "serving": self._serving(),
                "counts": counts, "counted_replicas": replicas, **data}  # fmt: skip

    @app.post("/api/models/{version}/promote", dependencies=ADMIN)
    async def promote(
        self,
        response: Response,
        version: Annotated[str, Path(pattern=VERSION_PARAM)],
        req: Annotated[PromoteRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        req = req or PromoteRequest()
        vid = await asyncio.to_thread(self._resolve, version)
        problems = await self._load_everywhere(vid)
        if problems:
            raise HTTPException(409, {"field": "version", "detail": f"{vid} does not load: {problems}"})
        if req.force:
            await asyncio.to_thread(
                self.registry.set_alias, "production", vid, req.reason or "promoted through the API (forced)"
            )
            promoted, reason = True, "forced"
        else:
            res = await asyncio.to_thread(self.registry.promote, vid)
            promoted, reason = res.promoted, res.reason
        await self._refresh_everywhere()
        arm, served = self.arms[0][0], self.arms[0][1]
        self._stamp(response, served, arm)
        return {
            "promoted": promoted,
            "reason": reason,
            "version": served,
            "arm": arm,
            "serving": self._serving(),
        }

    @app.post("/api/rollback", dependencies=ADMIN)
    async def rollback(
        self,
        response: Response,
        req: Annotated[RollbackRequest | None, Body()] = None,
    ) -> dict[str, Any]:
        req = req or RollbackRequest()
        if req.to is not None:
            target = await asyncio.to_thread(self._resolve, req.to)
            problems = await self._load_everywhere(target)
            if problems:
                raise HTTPException(409, {"field": "to", "detail": f"{target} does not load: {problems}"})
        try:
            target = await asyncio.to_thread(self.registry.rollback, req.to, req.reason)
        except RegistryError as exc:
            raise HTTPException(409, {"field": "to", "detail": str(exc)}) from None
        await self._load_everywhere(target)
        await self._refresh_everywhere()
        arm, served = self.arms[0][0], self.arms[0][1]
        self._stamp(response, served, arm)
        return {"production": target, "version": served, "arm": arm, "serving": self._serving()}

    @app.put("/api/ab", dependencies=ADMIN)
    async def ab(self, req: ABRequest, response: Response) -> dict[str, Any]:
        a = await asyncio.to_thread(self._resolve, str(self.config["version"]))
        vid = await asyncio.to_thread(self._resolve, req.version) if req.version else a
        if req.weight > 0:
            problems = await self._load_everywhere(vid)
            if problems:
                raise HTTPException(409, {"field": "version", "detail": f"{vid} does not load: {problems}"})
        await asyncio.to_thread(self._store_ab, vid, req.weight)
        self.config.pop("ab", None)  # the API's split replaces the user_config's
        await self._refresh_everywhere()
        arm, served = self.arms[0][0], self.arms[0][1]
        self._stamp(response, served, arm)
        return {"version": served, "arm": arm, "serving": self._serving()}
