"""One Serve deployment per ensemble member: a thin shell over ``ensemble.scoring``.

``Member`` is one class, bound once per model family under the member's name (``lstm``, ...,
``prophet``), like Ray's ``doc_code/multiplexed.py``:

* the multiplexed model id is the registry **version** (``@serve.multiplexed``): a replica keeps the
  last ``max_versions`` versions it served (production and an A/B arm), Serve routes a request to a
  replica that already holds its version, and a promotion loads the new version without restarting;
* a per-ticker member (Prophet: ``per_ticker`` on its class) is also multiplexed **by ticker**: the
  model id is ``<version>@<shard>/<shards>`` and each id holds the per-ticker models of one stable
  shard of the tickers (crc32 of the ticker), so the universe's few hundred per-ticker models are
  spread over the replicas and one forecast fans out over the shards concurrently;
* ``predict`` forecasts the whole universe of one as-of date (the ensemble needs every ticker of a
  date: it combines per-date z-scores), cached per (version, frame) so concurrent and repeated
  requests for one date compute it once;
* a per-ticker member first refits its models that are stale on the as-of date, in-process, as
  ``jobs.score`` does (``scoring.refresh_stale_prophet``: models fitted through a date more than
  ``scoring.prophet_refit_every_days`` trading dates before it are refitted on the history up to it),
  so the served numbers equal ``jobs.score``'s; the refit is cached per (version and shard, as-of
  date, caller's history);
* ``contributions`` returns a tree member's per-feature contributions (``scoring.member_contributions``)
  for the recommendations' ``top_features``;
* ``reconfigure(user_config)`` preloads the versions the application serves (``{"versions": [...]}``);
* ``check_health`` fails while the member cannot predict: its version failed to load, or its last
  prediction raised (until one succeeds).

No model math here: loading is ``scoring.load_version``, forecasting ``scoring.predict_member``, the
refit ``scoring.refresh_stale_prophet``, explaining ``scoring.member_contributions``.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
import time
import zlib
from collections import OrderedDict
from typing import Any

from ray import serve
from ray.exceptions import RayError

from ensemble import scoring
from ensemble.models import get_model_class
from ensemble.registry import ModelRegistry

logger = logging.getLogger("serving.members")

SHARD_SEP = "@"


def shard_of(ticker: str, shards: int) -> int:
    """The stable shard of a ticker (the same on every replica and every run)."""
    return zlib.crc32(str(ticker).encode()) % max(1, shards)


def model_id(version: str, shard: int | None = None, shards: int = 1) -> str:
    return version if shard is None else f"{version}{SHARD_SEP}{shard}/{shards}"


def parse_model_id(mid: str) -> tuple[str, int | None, int]:
    version, sep, rest = mid.partition(SHARD_SEP)
    if not sep:
        return version, None, 1
    shard, _, shards = rest.partition("/")
    return version, int(shard), int(shards)


class MemberUnavailableError(RuntimeError):
    """The member cannot forecast with this version (failed to load, or degraded in it)."""


@serve.deployment(
    ray_actor_options={"num_cpus": 0.1},
    max_ongoing_requests=8,
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class Member:
    def __init__(
        self, member: str, registry: str, max_cached_frames: int = 8, threads: int = 1, max_refits: int = 8
    ) -> None:
        self.member = member
        self.registry_root = registry
        self.registry = ModelRegistry(registry)
        self.per_ticker = bool(get_model_class(member).per_ticker)
        if get_model_class(member).uses_sequences:
            import torch

            torch.set_num_threads(max(1, int(threads)))  # a fraction of a core: no oversubscription
        self.max_cached = max_cached_frames
        self._cache: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Future[dict[str, Any]]] = {}
        self.max_refits = max_refits
        self._refits: OrderedDict[tuple[str, str], scoring.LoadedVersion] = OrderedDict()
        self._refitting: dict[tuple[str, str], asyncio.Task[scoring.LoadedVersion]] = {}
        self.refits: dict[str, Any] = {}  # the last refit: {as_of, tickers, failed, seconds}
        self.failure: str | None = None
        self.loaded: dict[str, float] = {}  # model id -> load time
        self.wanted: list[str] = []

    # -- versions -------------------------------------------------------------------------------------
    @serve.multiplexed(max_num_models_per_replica=8)  # 2 versions (A/B) x up to 4 shards
    async def get_model(self, mid: str) -> scoring.LoadedVersion:
        version, shard, shards = parse_model_id(mid)
        t0 = time.perf_counter()
        try:
            lv = await asyncio.to_thread(scoring.load_version, self.registry, version, [self.member])
        except Exception as exc:
            self.failure = f"version {version}: load failed: {type(exc).__name__}: {exc}"
            raise MemberUnavailableError(self.failure) from exc
        if self.member not in lv.models:
            why = lv.degraded.get(self.member, "not in this version")
            self.failure = f"version {lv.version}: {why}"
            raise MemberUnavailableError(self.failure)
        if shard is not None:
            lv = _shard_view(lv, self.member, shard, shards)
        self.loaded[mid] = time.perf_counter() - t0
        self.failure = None
        logger.info("%s: loaded %s in %.1f s", self.member, mid, self.loaded[mid])
        return lv

    def model_ids(self, version: str, shards: int) -> list[str]:
        if not self.per_ticker:
            return [model_id(version)]
        return [model_id(version, s, shards) for s in range(shards)]

    async def reconfigure(self, user_config: dict[str, Any] | None) -> None:
        """``{"versions": [id or alias, ...], "shards": n}``: load them now, not on the first request.
        A version that fails to load leaves the member unhealthy (reported), it does not crash it."""
        cfg = dict(user_config or {})
        self.wanted = [str(v) for v in cfg.get("versions", [])]
        await self.preload(self.wanted, int(cfg.get("shards", 1)))

    async def preload(self, versions: list[str], shards: int = 1) -> dict[str, Any]:
        """Load ``versions`` (ids or aliases) on this replica; returns {version id: "ok" | reason}."""
        out: dict[str, Any] = {}
        for v in versions:
            try:
                vid = await asyncio.to_thread(self.registry.resolve, v)
                for mid in self.model_ids(vid, shards):
                    await self.get_model(mid)
                out[vid] = "ok"
            except Exception as exc:
                out[v] = f"{type(exc).__name__}: {exc}"
        return out

    # -- forecasting ----------------------------------------------------------------------------------
    async def _refreshed(
        self, mid: str, lv: scoring.LoadedVersion, as_of: str, refit_key: str, prices_ref: Any
    ) -> scoring.LoadedVersion:
        """``lv`` with its models that are stale on ``as_of`` refitted (cached per ``refit_key``). The
        refit runs as its own task: a request that times out (and is cancelled) does not cancel it,
        and the next request for the date waits for the same refit instead of starting another."""
        key = (mid, refit_key)
        if key in self._refits:
            self._refits.move_to_end(key)
            return self._refits[key]
        task = self._refitting.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._refit(key, lv, as_of, prices_ref))
            self._refitting[key] = task
            task.add_done_callback(lambda t: (self._refitting.pop(key, None), t.cancelled() or t.exception()))
        return await asyncio.shield(task)

    async def _refit(
        self, key: tuple[str, str], lv: scoring.LoadedVersion, as_of: str, prices_ref: Any
    ) -> scoring.LoadedVersion:
        prices = await prices_ref
        fresh, record = await asyncio.to_thread(scoring.refresh_stale_prophet, lv, prices, _ts(as_of))
        if record is not None:
            self.refits = {"model": key[0], "as_of": record.as_of, "tickers": len(record.refitted),
                           "failed": record.failed, "seconds": record.seconds}  # fmt: skip
            logger.info("%s %s: refitted %d stale tickers as of %s in %.1f s (%d failed)", self.member,
                        key[0], len(record.refitted), as_of, record.seconds, len(record.failed))  # fmt: skip
        self._refits[key] = fresh
        while len(self._refits) > self.max_refits:
            self._refits.popitem(last=False)
        return fresh

    async def predict(
        self, as_of: str, frame_key: str, frame_box: list[Any], refit_key: str | None = None
    ) -> dict[str, Any]:
        """The member's forecasts for every ticker of ``as_of`` (of this shard, for a per-ticker
        member). ``frame_box``: ``[ObjectRef]`` of the prepared frame, fetched only on a cache miss;
        for a per-ticker member also the prices the frame was prepared from (``[frame, prices]``),
        read to refit the stale models (``refit_key``: what identifies those prices up to ``as_of``,
        default ``frame_key``)."""
        mid = serve.get_multiplexed_model_id()
        lv = await self.get_model(mid)
        key = (mid, frame_key)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        if key in self._inflight:
            return await asyncio.shield(self._inflight[key])
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved even if unawaited
        self._inflight[key] = fut
        try:
            if self.per_ticker and len(frame_box) > 1:
                lv = await self._refreshed(mid, lv, as_of, refit_key or frame_key, frame_box[1])
            frame = await frame_box[0]
            _, shard, shards = parse_model_id(mid)
            if shard is not None:
                tickers = frame["ticker"].astype(str)
                frame = frame[[shard_of(t, shards) == shard for t in tickers]]
            t0 = time.perf_counter()
            preds, skipped = await asyncio.to_thread(
                scoring.predict_member, lv, self.member, frame, _ts(as_of)
            )
            result = {
                "member": self.member,
                "version": lv.version,
                "preds": preds,
                "skipped": {str(k): str(v) for k, v in skipped.items()},
                "seconds": time.perf_counter() - t0,
            }
        except asyncio.CancelledError:  # the caller gave up: whoever waits on this computation retries
            fut.cancel()
            raise
        except Exception as exc:
            if not isinstance(
                exc, RayError
            ):  # not the inputs lost with their owner (a dead ensemble replica)
                self.failure = f"predict failed: {type(exc).__name__}: {exc}"
            fut.set_exception(exc)
            raise
        finally:
            self._inflight.pop(key, None)
        self.failure = None
        fut.set_result(result)
        self._cache[key] = result
        while len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return result

    async def contributions(self, frame_box: list[Any], horizon: int, tickers: list[str]) -> dict[str, Any]:
        """A tree member's per-feature contributions at ``horizon`` for the last date of the frame
        (``[ObjectRef]``), over ``tickers`` (``scoring.member_contributions``; None when the member
        has none)."""
        mid = serve.get_multiplexed_model_id()
        lv = await self.get_model(mid)
        frame = await frame_box[0]
        c = await asyncio.to_thread(scoring.member_contributions, lv, self.member, frame, horizon, tickers)
        return {"member": self.member, "version": lv.version, "contributions": c}

    def status(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "healthy": self.failure is None,
            "detail": self.failure,
            "loaded": sorted(self.loaded),
            "replica": serve.get_replica_context().replica_id.to_full_id_str(),
            **({"refit": self.refits} if self.refits else {}),
        }

    def check_health(self) -> None:
        if self.failure is not None:
            raise RuntimeError(f"{self.member}: {self.failure}")


def _shard_view(lv: scoring.LoadedVersion, member: str, shard: int, shards: int) -> scoring.LoadedVersion:
    """The version with only this shard's per-ticker models kept (the rest is freed)."""
    full = lv.models[member]
    part = copy.copy(full)
    fitted = getattr(full, "models_", {})
    part.models_ = {t: m for t, m in fitted.items() if shard_of(t, shards) == shard}  # type: ignore[attr-defined]
    return dataclasses.replace(lv, models={member: part})


def _ts(as_of: str) -> Any:
    import pandas as pd

    return pd.Timestamp(as_of)
