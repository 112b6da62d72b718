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
* ``reconfigure(user_config)`` preloads the versions the application serves (``{"versions": [...]}``);
* ``check_health`` fails while the member cannot predict: its version failed to load, or its last
  prediction raised (until one succeeds).

No model math here: loading is ``scoring.load_version``, forecasting ``scoring.predict_member``.
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
    def __init__(self, member: str, registry: str, max_cached_frames: int = 8, threads: int = 1) -> None:
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
    async def predict(self, as_of: str, frame_key: str, frame_box: list[Any]) -> dict[str, Any]:
        """The member's forecasts for every ticker of ``as_of`` (of this shard, for a per-ticker
        member). ``frame_box``: ``[ObjectRef]`` of the prepared frame, fetched only on a cache miss."""
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
        except Exception as exc:
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

    def status(self) -> dict[str, Any]:
        return {
            "member": self.member,
            "healthy": self.failure is None,
            "detail": self.failure,
            "loaded": sorted(self.loaded),
            "replica": serve.get_replica_context().replica_id.to_full_id_str(),
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
