"""The Serve application through real HTTP on a local Serve instance (started once for the module: a
tiny version trained on a private local Ray, then the whole application on 2 CPUs).

Every endpoint; the numbers equal ``jobs.score``'s (``scoring.score`` after the same refit of stale
Prophet models; recommendations with the same drivers); bad input is a 4xx naming the field; admin
routes answer 401 without the key; a killed member replica costs no client a failure, also under 20
concurrent clients with one of two replicas killed, and a killed ensemble or ingress replica none after
one client retry; promotion, an A/B split and rollback reach the running replicas without restarting
them; ``jobs.deploy`` refuses a damaged version, and one whose forecasts differ from those recorded at
training time, and keeps serving; and the API, fuzzed from its OpenAPI schema, never answers 5xx.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

pytestmark = [pytest.mark.ray, pytest.mark.slow]

KEY = "test-admin-key-0123456789"
TINY: dict[str, Any] = {
    "synthetic": {"n_tickers": 16, "n_days": 360, "seed": 3},
    "features": {"selection_k": 12, "sequence_length": 10},
    "training": {
        "training_stocks": 16,
        "training_days": 200,
        "max_epochs": 1,
        "tuning_trials": 1,
        "valid_fraction": 0.35,
    },  # fmt: skip
    "ray": {"trial_cpus": 0.5, "cpus_per_worker": 0.5, "prophet_task_cpus": 0.5, "max_failures": 0},
    "models": {
        "xgboost": {"n_estimators": 10, "early_stopping_rounds": 5, "n_jobs": 1},
        "lightgbm": {"n_estimators": 10, "early_stopping_rounds": 5, "n_jobs": 1},
        "random_forest": {"n_estimators": 5, "max_depth": 3, "n_jobs": 1},
        "lstm": {"hidden": 8, "batch_size": 128, "max_samples_per_epoch": 500},
        "transformer": {"d_model": 16, "batch_size": 128, "max_samples_per_epoch": 500},
        "prophet": {"min_history": 100},
    },
}


@dataclass
class Served:
    url: str
    root: str
    v1: str
    v2: str  # the same models as v1 under another id, with a better validation score
    bad: str  # a copy of v1 with a damaged artifact
    settings: Any
    client: httpx.Client
    log_dir: str  # the prediction log the service writes (Parquet)
    monitor_dir: str  # where jobs.monitor reports go (the latest is in /api/health)


def clone_version(reg: Any, vid: str, bump: float, edit_extras: Any = None) -> str:
    man = reg.manifest(vid)
    metrics = copy.deepcopy(man["metrics"])
    metrics["ensemble"]["valid_rank_ic_h5"] += bump
    extras = {n: reg.load_extra(vid, n) for n in man["extras"]}
    if edit_extras is not None:
        edit_extras(extras)
    return reg.create_version(
        reg.load_version(vid), metrics=metrics, config=man["config"], data_fingerprint=man["data_fingerprint"],
        extras=extras, notes=[f"copy of {vid} (tests)"],
    )  # fmt: skip


def wait_until(pred: Any, timeout: float, what: str, every: float = 1.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = pred()
            if last:
                return last
        except Exception as exc:  # the service may still be starting
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}: {last!r}")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    import ray
    from ray import serve

    from ensemble.config import load_settings
    from ensemble.data.pgserver import free_port
    from ensemble.registry import ModelRegistry
    from jobs import train
    from serving.app import build_app

    root = str(tmp_path_factory.mktemp("serving") / "registry")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")
        mp.setenv("ENSEMBLE_API_KEY", KEY)  # before ray.init: the replicas inherit it
        ray.init(address="local", num_cpus=2, include_dashboard=False)
        try:
            # trained as of 40 trading dates before the data's end: the stored Prophet models (fitted
            # through the validation end) are fresh for 21 dates after it and stale on the latest dates
            from ensemble.data.sources import load_prices

            dates = sorted(load_prices(load_settings(overrides=TINY))[0]["date"].unique())
            as_of = str(dates[-41])[:10]
            over = {**TINY, "training": {**TINY["training"], "as_of": as_of}, "registry_root": root}
            settings = load_settings(overrides=over)
            v1 = train.run(settings, registry_root=root, progress=False)["version"]
            reg = ModelRegistry(root)
            v2 = clone_version(reg, v1, bump=1.0)
            bad = clone_version(reg, v1, bump=2.0)
            victim = next((Path(root) / "versions" / bad / "models" / "xgboost").glob("*.ubj"))
            victim.write_bytes(victim.read_bytes()[:-7] + b"damaged")
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            log_dir, monitor_dir = str(Path(root).parent / "predlog"), str(Path(root).parent / "monitor")
            app = {"registry": root, "member_timeout_s": 120, "cache_ttl_s": 600, "log_dir": log_dir,
                   "monitor_dir": monitor_dir, "num_replicas": {"random_forest": 2, "prophet": 2, "Api": 2}}  # fmt: skip
            serve.run(build_app(app), blocking=False)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300)
            wait_until(lambda: client.get("/api/health").json()["healthy"], 600, "a healthy service", 2.0)
            yield Served(
                f"http://127.0.0.1:{port}", root, v1, v2, bad, settings, client, log_dir, monitor_dir
            )
            client.close()
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture(scope="module")
def prices(served: Served) -> Any:
    from ensemble.data.sources import load_prices

    return load_prices(served.settings)[0]


def _detail(r: httpx.Response) -> Any:
    return r.json()["detail"]


def _fields(r: httpx.Response) -> set[str]:
    """The fields a 422 names: pydantic's locations, or our {"field": ...}."""
    d = _detail(r)
    if isinstance(d, dict):
        return {str(d.get("field"))}
    return {str(p) for e in d for p in e["loc"]}


# -- the endpoints ------------------------------------------------------------------------------------
def test_health_reports_every_member_and_the_seed_shape(served: Served) -> None:
    r = served.client.get("/api/health")
    assert r.status_code == 200
    h = r.json()
    assert h["healthy"] is True and h["status"] == "healthy"
    assert h["version"] == served.v1 and h["arm"] == "A"
    assert r.headers["X-Model-Version"] == served.v1 and r.headers["X-AB-Arm"] == "A"
    assert sorted(h["loaded_models"]) == sorted(h["models"]) == sorted(TINY["models"])
    assert h["fallback_models"] == []
    assert all(m == {"status": "healthy", "version": served.v1} for m in h["models"].values()), h["models"]


def jobs_score(served: Served, prices: Any, day: Any = None, explain_horizon: int | None = None) -> Any:
    """What ``jobs.score`` scores: the version with its stale Prophet models refitted (in the Ray
    fan-out, as ``jobs.score`` runs it), then ``scoring.score``; and how many tickers were refitted."""
    import pandas as pd

    from ensemble import scoring
    from ensemble.registry import ModelRegistry
    from jobs import score as job

    lv = scoring.load_version(ModelRegistry(served.root), served.v1)
    day = pd.Timestamp(day) if day is not None else pd.Timestamp(prices["date"].max())
    upto = prices.loc[prices["date"] <= day].reset_index(drop=True)
    fresh, record = job.refresh_prophet(lv, upto, day, lv.settings, progress=False)
    res = scoring.score(fresh, upto, day, explain_horizon=explain_horizon)
    return lv, res, 0 if record is None else len(record.refitted)


def test_predict_equals_scoring_score(served: Served, prices: Any) -> None:
    """Same features, same preprocessor, same numbers as ``jobs.score``: the ensemble, its interval and
    confidence, and every member's forecast in return units, with the Prophet models that are stale
    on the date refitted as ``jobs.score`` refits them (in the Prophet replicas, in-process)."""
    lv, res, refitted = jobs_score(served, prices)
    assert refitted == len(lv.models["prophet"].models_) > 0  # every Prophet model is stale on this date
    ticker = str(res.frame["ticker"].iloc[3])
    r = served.client.post("/api/predict", json={"ticker": ticker})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["version"] == served.v1 and body["arm"] == "A" and body["left_out"] == {}
    assert body["as_of"] == str(res.as_of.date())
    assert sorted(body["members"]) == sorted(lv.models)
    want = res.frame.set_index("ticker").loc[ticker]
    f = body["forecast"]
    assert f["ticker"] == ticker and sorted(f["horizons"]) == ["20", "5", "60"]
    for h in (5, 20, 60):
        got = f["horizons"][str(h)]
        assert got["ensemble"] == pytest.approx(want[f"pred_h{h}"], rel=1e-9, abs=1e-12)
        assert got["confidence"] == pytest.approx(want[f"confidence_h{h}"], rel=1e-9, abs=1e-12)
        assert got["interval"]["80"] == pytest.approx([want[f"lo80_h{h}"], want[f"hi80_h{h}"]], rel=1e-9)
        assert (
            got["interval"]["95"][0] < got["interval"]["80"][0] < got["ensemble"] < got["interval"]["80"][1]
        )
        for m in lv.models:
            assert got["members"][m] == pytest.approx(want[f"{m}_h{h}"], rel=1e-9, abs=1e-12), (m, h)
    # the Prophet replica reports its refit
    from ray import serve

    handle, seen = serve.get_deployment_handle("prophet", "default"), {}
    for _ in range(30):  # two replicas, each holding some shards: ask until both have answered
        st = handle.status.remote().result(timeout_s=60)
        seen[st["replica"]] = st
        if len(seen) == 2:
            break
    refits = [st["refit"] for st in seen.values() if "refit" in st]
    assert refits and all(r["tickers"] >= 1 and r["failed"] == {} for r in refits), seen


def test_predict_one_horizon_and_the_batch(served: Served, prices: Any) -> None:
    tickers = sorted(prices["ticker"].unique())
    r = served.client.post("/api/predict", json={"ticker": tickers[0], "horizon": 20})
    assert r.status_code == 200 and list(r.json()["forecast"]["horizons"]) == ["20"]
    r = served.client.post("/api/predict/batch", json={"tickers": tickers, "horizon": 5})
    assert r.status_code == 200, r.text
    b = r.json()
    assert b["version"] == served.v1 and b["arm"] == "A" and r.headers["X-Model-Version"] == served.v1
    assert [f["ticker"] for f in b["forecasts"]] == tickers
    assert all(np.isfinite(f["horizons"]["5"]["ensemble"]) for f in b["forecasts"])
    one = served.client.post("/api/predict", json={"ticker": tickers[5], "horizon": 5}).json()["forecast"]
    assert b["forecasts"][5] == one  # a ticker's numbers do not depend on the batch


def test_a_forecast_says_whether_it_is_point_in_time(served: Served, prices: Any) -> None:
    """A version read prices through its data end (the validation end): a forecast as of that date or
    later used nothing after its as-of date; one for an earlier date is in-sample, and says so."""
    from ensemble.registry import ModelRegistry

    end = ModelRegistry(served.root).load_extra(served.v1, "training")["split"]["valid_end"]
    dates = [str(d)[:10] for d in sorted(prices["date"].unique())]
    t = str(sorted(prices["ticker"].unique())[4])
    pin = {"X-API-Key": KEY}
    for day, pit in ((dates[-1], True), (end, True), (dates[dates.index(end) - 10], False)):
        r = served.client.post(
            "/api/predict", json={"ticker": t, "as_of": day, "version": served.v1}, headers=pin
        )
        assert r.status_code == 200, r.text
        assert (r.json()["data_end"], r.json()["point_in_time"]) == (end, pit), (day, r.json()["as_of"])
    b = served.client.post("/api/predict/batch", json={"tickers": [t], "as_of": dates[dates.index(end) - 10]})
    assert b.json()["point_in_time"] is False


def test_predict_with_the_callers_own_history(served: Served, prices: Any) -> None:
    ticker = str(sorted(prices["ticker"].unique())[2])
    own = prices.loc[prices["ticker"] == ticker, ["date", "open", "high", "low", "close", "volume"]]
    bars = [{**{k: float(v) for k, v in row.items() if k != "date"}, "date": str(row["date"].date())}
            for row in own.to_dict("records")]  # fmt: skip
    plain = served.client.post("/api/predict", json={"ticker": ticker}).json()["forecast"]
    same = served.client.post("/api/predict", json={"ticker": ticker, "history": bars})
    assert same.status_code == 200, same.text
    assert same.json()["forecast"] == plain  # the stored bars, sent back: the same forecast
    moved = copy.deepcopy(bars)
    for b in moved[-5:]:
        for k in ("open", "high", "low", "close"):
            b[k] *= 1.25
    r = served.client.post("/api/predict", json={"ticker": ticker, "history": moved})
    assert r.status_code == 200, r.text
    assert r.json()["forecast"]["horizons"]["5"]["ensemble"] != plain["horizons"]["5"]["ensemble"]


def test_recommendations_are_the_librarys(served: Served, prices: Any) -> None:
    """``ensemble.recommend`` over the served forecast: the same tickers, order, actions, sizes and
    drivers (``top_features``, from the tree members' contributions) as ``jobs.score`` writes."""
    from ensemble import scoring
    from ensemble.recommend import recommend

    horizon = served.settings.action_horizon()
    lv, res, _ = jobs_score(served, prices, explain_horizon=horizon)
    want = recommend(res, prices, lv.settings.recommend, horizon, descriptions=scoring.feature_descriptions())
    trees = [
        m for m in ("lightgbm", "random_forest", "xgboost") if lv.ensemble.weights(horizon).get(m, 0) > 0
    ]
    assert want["top_features"].str.len().gt(0).all() == bool(trees)  # no tree weighted: no drivers
    r = served.client.get("/api/recommendations", params={"top": 3})
    assert r.status_code == 200, r.text
    rec = r.json()
    assert rec["version"] == served.v1 and rec["arm"] == "A" and rec["horizon"] == horizon
    assert r.headers["X-Model-Version"] == served.v1
    got = rec["recommendations"]
    assert [x["ticker"] for x in got] == list(want["ticker"][:3])
    for x, (_, w) in zip(got, want.head(3).iterrows(), strict=True):
        assert x["action"] == w["action"]
        assert x["risk_adjusted"] == pytest.approx(w["risk_adjusted"], rel=1e-9)
        assert x["weight"] == pytest.approx(w["weight"], rel=1e-9, abs=1e-15)
        assert x["top_features"] == w["top_features"] and bool(x["top_features"]) == bool(trees), x
    assert sum(rec["actions"].values()) == len(want)
    assert rec["explained_by"] == ["lightgbm", "random_forest", "xgboost"] and "unexplained" not in rec
    day = str(sorted(prices["date"].unique())[-10])[:10]
    r = served.client.get("/api/recommendations", params={"top": 2, "date": day})
    assert r.status_code == 200 and r.json()["as_of"] == day and len(r.json()["recommendations"]) == 2


def test_models_lists_versions_aliases_and_counts(served: Served) -> None:
    r = served.client.get("/api/models")
    assert r.status_code == 200
    m = r.json()
    assert {v["version"] for v in m["versions"]} == {served.v1, served.v2, served.bad}
    assert m["aliases"]["production"] == served.v1 and m["version"] == served.v1
    assert m["serving"] == {"A": {"version": served.v1, "weight": 1.0}}
    assert m["counts"].get("A", 0) >= 1
    assert "valid_rank_ic_h5" in next(v for v in m["versions"] if v["version"] == served.v1)["metrics"]


def test_a_pinned_version_needs_the_key_and_stays_outside_the_split(served: Served, prices: Any) -> None:
    """A batch or predict request naming a ``version`` is scored by it (arm ``pinned``, not counted),
    and only with the admin key: 401 without it, 404 naming the field for an unknown version."""
    c = served.client
    t = str(sorted(prices["ticker"].unique())[2])
    body = {"tickers": [t], "version": served.v2}
    r = c.post("/api/predict/batch", json=body)
    assert r.status_code == 401, r.text
    r = c.post("/api/predict", json={"ticker": t, "version": served.v2}, headers={"X-API-Key": "wrong"})
    assert r.status_code == 401, r.text
    counts = c.get("/api/models").json()["counts"]
    r = c.post("/api/predict/batch", json=body, headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    assert r.json()["version"] == served.v2 and r.json()["arm"] == "pinned"
    assert r.headers["X-Model-Version"] == served.v2 and r.headers["X-AB-Arm"] == "pinned"
    r = c.post("/api/predict", json={"ticker": t, "version": served.v2}, headers={"X-API-Key": KEY})
    assert r.status_code == 200 and r.json()["version"] == served.v2 and r.json()["arm"] == "pinned"
    r = c.post("/api/predict", json={"ticker": t, "version": "v-none"}, headers={"X-API-Key": KEY})
    assert r.status_code == 404 and _detail(r)["field"] == "version", r.text
    assert c.get("/api/models").json()["counts"] == counts  # outside the A/B counts
    assert c.post("/api/predict", json={"ticker": t}).json()["version"] == served.v1  # production as before


def test_openapi_is_served(served: Served) -> None:
    spec = served.client.get("/openapi.json").json()
    assert {"/api/health", "/api/predict", "/api/predict/batch", "/api/recommendations", "/api/models",
            "/api/models/{version}/promote", "/api/rollback", "/api/ab"} <= set(spec["paths"])  # fmt: skip


# -- bad input ----------------------------------------------------------------------------------------
def test_bad_input_is_a_4xx_naming_the_field(served: Served, prices: Any) -> None:
    c = served.client
    t = str(sorted(prices["ticker"].unique())[0])
    dates = sorted(prices["date"].unique())
    r = c.post("/api/predict", json={"ticker": "ZZZ999"})
    assert r.status_code == 404 and _detail(r)["field"] == "ticker", r.text
    r = c.post("/api/predict/batch", json={"tickers": [t, "ZZZ999"]})
    assert r.status_code == 404 and "ZZZ999" in _detail(r)["detail"], r.text
    cases: list[tuple[Any, str]] = [
        ({}, "ticker"),
        ({"ticker": "no spaces!"}, "ticker"),
        ({"ticker": t, "horizon": 7}, "horizon"),
        ({"ticker": t, "horizon": "five"}, "horizon"),
        ({"ticker": t, "as_of": "2020-13-45"}, "as_of"),
        ({"ticker": t, "as_of": "2020-05-16"}, "as_of"),  # a Saturday: no data
        ({"ticker": t, "as_of": "1990-01-02"}, "as_of"),
        ({"ticker": t, "unexpected": 1}, "unexpected"),
        ({"ticker": t, "history": []}, "history"),
    ]
    good_bar = {"date": str(dates[-1])[:10], "open": 10, "high": 11, "low": 9, "close": 10.5, "volume": 1000}
    for field, value in (("close", -1.0), ("volume", -5), ("low", 10.8), ("open", 0)):
        cases.append(({"ticker": t, "history": [{**good_bar, field: value}]}, "history"))
    short = [{**good_bar, "date": str(d)[:10]} for d in dates[-5:]]  # valid bars, too few of them
    cases.append(({"ticker": t, "history": short}, "history"))
    cases.append(({"ticker": t, "history": [{**good_bar, "date": "2020-05-16"}]}, "history"))
    for body, field in cases:
        r = c.post("/api/predict", json=body)
        assert r.status_code == 422 and field in _fields(r), (body, r.status_code, r.text)
    # NaN and infinity are not JSON, but Python's parser reads them: refused, naming the field
    raw = json.dumps({"ticker": t, "history": [{**good_bar, "close": "__NAN__"}]}).replace('"__NAN__"', "NaN")
    r = c.post("/api/predict", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and "history" in _fields(r), r.text
    r = c.post("/api/predict", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422
    for body, field in (({"tickers": []}, "tickers"), ({"tickers": [t], "horizon": 1}, "horizon")):
        r = c.post("/api/predict/batch", json=body)
        assert r.status_code == 422 and field in _fields(r), (body, r.text)
    for params, field in (({"top": 0}, "top"), ({"top": "x"}, "top"), ({"date": "2020-05-16"}, "date")):
        r = c.get("/api/recommendations", params=params)
        assert r.status_code == 422 and field in _fields(r), (params, r.text)
    assert c.get("/api/health").json()["healthy"]  # and the service is still up


def test_admin_routes_need_the_key(served: Served) -> None:
    c = served.client
    calls = [
        ("POST", f"/api/models/{served.v2}/promote", {"force": True}),
        ("POST", "/api/rollback", {}),
        ("PUT", "/api/ab", {"version": served.v2, "weight": 0.5}),
        ("PUT", "/api/ab", {"weight": "not a number"}),  # the key is checked before the body
    ]
    for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
        for method, url, body in calls:
            r = c.request(method, url, json=body, headers=headers)
            assert r.status_code == 401, (method, url, headers, r.text)
    assert c.get("/api/models").json()["aliases"]["production"] == served.v1  # nothing changed
    r = c.post("/api/models/v20990101T000000000000-000000/promote", headers={"X-API-Key": KEY})
    assert r.status_code == 404 and _detail(r)["field"] == "version"
    r = c.put("/api/ab", json={"weight": 2}, headers={"X-API-Key": KEY})
    assert r.status_code == 422 and "weight" in _fields(r)


# -- faults -------------------------------------------------------------------------------------------
def test_a_killed_member_replica_costs_no_client_a_failure(served: Served, prices: Any) -> None:
    import ray

    c = served.client
    st = c.get("/api/health").json()
    assert st["healthy"]
    (old,) = _replicas("xgboost")
    ray.kill(ray.get_actor(old, namespace="serve"), no_restart=True)
    day = str(sorted(prices["date"].unique())[-3])[:10]  # not cached yet: the members are called
    t = str(sorted(prices["ticker"].unique())[1])
    r = c.post("/api/predict", json={"ticker": t, "as_of": day})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "xgboost" in body["members"] or "xgboost" in body["left_out"], body
    if "xgboost" in body["left_out"]:  # left out and said so, in the response and in /api/health
        assert body["left_out"]["xgboost"] and body["forecast"]["horizons"]["5"]["n_models"] == 5
        assert c.get("/api/health").json()["models"]["xgboost"]["status"] in ("degraded", "failed")
    # the replica comes back, and a forecast of a new date uses all six members again
    wait_until(
        lambda: len(_replicas("xgboost")) == 1 and old not in _replicas("xgboost"), 300, "a new replica"
    )
    day2 = str(sorted(prices["date"].unique())[-4])[:10]
    r2 = wait_until(lambda: _all_six(c, t, day2), 300, "a forecast with all six members", 5.0)
    assert r2["left_out"] == {}
    wait_until(lambda: c.get("/api/health").json()["healthy"], 120, "health after the restart")


def _replicas(deployment: str, app: str = "default") -> set[str]:
    """The Ray actor names of the live replicas of ``deployment`` (the named actors of Serve's
    namespace, from the GCS: no dashboard needed)."""
    import ray
    from ray.serve._private.common import ReplicaID

    out = set()
    for a in ray.util.list_named_actors(all_namespaces=True):
        name = str(a["name"])
        if a["namespace"] == "serve" and ReplicaID.is_full_id_str(name):
            dep = ReplicaID.from_full_id_str(name).deployment_id
            if dep.name == deployment and dep.app_name == app:
                out.add(name)
    return out


def _all_six(c: httpx.Client, ticker: str, day: str) -> dict[str, Any] | None:
    r = c.post("/api/predict", json={"ticker": ticker, "as_of": day})
    assert r.status_code == 200, r.text
    b = r.json()
    return b if len(b["members"]) == 6 and not b["left_out"] else None


def _fresh_dates(served: Served, prices: Any) -> list[str]:
    """The dates on which no Prophet model is stale (nothing to refit: every request is cheap)."""
    from ensemble import scoring
    from ensemble.registry import ModelRegistry

    lv = scoring.load_version(ModelRegistry(served.root), served.v1, ["prophet"])
    through = scoring.prophet_fitted_through(lv.models["prophet"])
    every = lv.settings.scoring.prophet_refit_every_days
    dates = sorted(prices["date"].unique())
    first = max(through.values())
    return [str(d)[:10] for d in dates
            if d >= first and not scoring.stale_prophet_tickers(through, dates, d, every)]  # fmt: skip


@dataclass
class Answer:
    started: float
    ended: float
    attempts: int
    status: int  # the last attempt's; -1: no HTTP answer (the connection failed)
    body: Any
    first: tuple[int, str] | None = None  # the failed first attempt, when retried


class Load:
    """``clients`` threads posting forecasts until stopped, each request unique (the client's ticker
    with its own bars and a volume no other request sends, on a date with nothing to refit), so that
    every request reaches the ensemble and all the members. ``retry``: a client repeats a failed
    request once."""

    def __init__(self, served: Served, prices: Any, dates: list[str], clients: int = 20, retry: bool = False):
        self.url, self.retry, self.clients = served.url, retry, clients
        self.dates = dates
        self.tickers = [str(t) for t in sorted(prices["ticker"].unique())]
        self.prices = prices
        self.bars: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.answers: list[Answer] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True) for i in range(clients)]

    def _history(self, ticker: str, day: str, k: int) -> list[dict[str, Any]]:
        with self.lock:
            if (ticker, day) not in self.bars:
                own = self.prices.loc[(self.prices["ticker"] == ticker) & (self.prices["date"] <= day)]
                self.bars[(ticker, day)] = [
                    {"date": str(r["date"].date()), **{c: float(r[c]) for c in ("open", "high", "low", "close", "volume")}}
                    for r in own.to_dict("records")
                ]  # fmt: skip
            bars = self.bars[(ticker, day)]
        return [*bars[:-1], {**bars[-1], "volume": bars[-1]["volume"] + k}]

    @staticmethod
    def _post(hc: httpx.Client, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            r = hc.post("/api/predict", json=body)
        except httpx.HTTPError as exc:
            return -1, f"{type(exc).__name__}: {exc}"
        return r.status_code, (r.json() if r.status_code == 200 else r.text[:300])

    def _client(self, i: int) -> None:
        n = 0
        with httpx.Client(base_url=self.url, timeout=300) as hc:
            while not self.stop.is_set():
                day = self.dates[(i + n) % len(self.dates)]
                t = self.tickers[i % len(self.tickers)]
                body = {
                    "ticker": t,
                    "as_of": day,
                    "horizon": 5,
                    "history": self._history(t, day, 1 + i * 10_000 + n),
                }
                n += 1
                t0 = time.monotonic()
                code, res = self._post(hc, body)
                if code == 200 or not self.retry:
                    self.answers.append(Answer(t0, time.monotonic(), 1, code, res))
                    continue
                first = (code, str(res)[:300])
                code, res = self._post(hc, body)
                self.answers.append(Answer(t0, time.monotonic(), 2, code, res, first))

    def __enter__(self) -> Load:
        for th in self.threads:
            th.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        deadline = time.monotonic() + (5 if exc[0] is not None else 650)  # a request may take 2 x 300 s
        for th in self.threads:
            th.join(timeout=max(0.1, deadline - time.monotonic()))

    def ended_after(self, t: float) -> int:
        return sum(1 for a in list(self.answers) if a.ended > t)

    def wait(self, n: int, after: float = 0.0, timeout: float = 300) -> None:
        wait_until(lambda: self.ended_after(after) >= n, timeout, f"{n} answers", 0.2)


def _kill_one(deployment: str) -> tuple[str, float]:
    import ray

    victim = sorted(_replicas(deployment))[0]
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    return victim, time.monotonic()


def _freeze_then_kill(deployment: str, hold_s: float) -> tuple[str, float]:
    """Stop one replica's process (SIGSTOP) for ``hold_s`` seconds, then SIGKILL it. While it is
    stopped, the calls the ensemble routes to it (Serve's router keeps using its cached queue lengths
    for a while) hang there, so the kill finds calls in flight, as a crash under load does."""
    import os
    import signal

    import ray

    victim = sorted(_replicas(deployment))[0]
    pid = int(ray.get(ray.get_actor(victim, namespace="serve").__ray_call__.remote(lambda _: os.getpid())))
    os.kill(pid, signal.SIGSTOP)
    time.sleep(hold_s)
    os.kill(pid, signal.SIGKILL)
    return victim, time.monotonic()


def _app_status() -> tuple[str, dict[str, str]]:
    """Serve's own view of the application: its status and each deployment's (the enums' values:
    ``str()`` of these str-enums is 'ApplicationStatus.RUNNING' on Python 3.11)."""
    from ray import serve

    app = serve.status().applications["default"]
    return app.status.value, {name: d.status.value for name, d in app.deployments.items()}


def _running() -> bool:
    """The application RUNNING: Serve counts every deployment's target replicas running (a deployment
    is UNHEALTHY from a replica's death until its replacement runs; UPSCALING or DOWNSCALING under
    autoscaling is running). While not, it raises with the statuses, which is what a timeout of
    wait_until or a failed assertion reports."""
    status, deployments = _app_status()
    if status != "RUNNING":
        raise AssertionError(f"application {status}, deployments {deployments}")
    return True


def _comes_back(deployment: str, victim: str, n: int) -> None:
    """A replacement for the killed replica exists and Serve counts it running: the application is
    back to RUNNING (a named actor exists while its constructor still loads the models, and Serve
    keeps the deployment UNHEALTHY until then)."""
    wait_until(
        lambda: len(r := _replicas(deployment)) == n and victim not in r, 300, f"a new {deployment} replica"
    )
    wait_until(_running, 300, f"the application running again after the {deployment} kill")


def test_killed_replicas_under_concurrent_load(served: Served, prices: Any) -> None:
    """20 concurrent clients, every request reaching all the members. One of the two random_forest
    replicas is stopped (SIGSTOP) for 3 s, then killed: no client sees a failure, without retrying
    (Serve re-sends the calls a replica had not accepted; the ensemble retries those it had, or
    answers without the member and says so; which of these happened is printed, not asserted: RF
    calls take milliseconds, so whether one was in flight is chance; the Prophet test below makes
    sure of it); the replica comes back. Then the ensemble's replica and the
    ingress's are killed: no client sees a failure after one retry."""
    c = served.client
    dates = _fresh_dates(served, prices)
    assert len(dates) >= 10, dates
    wait_until(lambda: len(_replicas("random_forest")) == 2, 120, "two random_forest replicas")
    before = c.get("/api/health").json()["retries"].get("random_forest", 0)
    with Load(served, prices, dates, clients=20) as load:
        load.wait(10)
        victim, killed = _freeze_then_kill("random_forest", hold_s=3.0)
        load.wait(40, after=killed)
    answers = load.answers
    failed = [a for a in answers if a.status != 200]
    assert not failed, [(a.status, a.body) for a in failed[:3]]
    without = [a.body for a in answers if "random_forest" in a.body["left_out"]]
    for b in without:  # answered without it, and said so
        assert b["left_out"]["random_forest"] and "random_forest" not in b["members"], b
        assert "random_forest" not in b["forecast"]["horizons"]["5"]["members"], b
    retried = c.get("/api/health").json()["retries"].get("random_forest", 0) - before
    print(f"\nmember replica killed: {len(answers)} answers ({load.ended_after(killed)} after the kill), "
          f"0 failed, {len(without)} without random_forest, {retried} member calls retried")  # fmt: skip
    _comes_back("random_forest", victim, 2)
    t = str(sorted(prices["ticker"].unique())[1])
    wait_until(lambda: _all_six(c, t, dates[-1]), 300, "a forecast with all six members", 5.0)
    wait_until(lambda: c.get("/api/health").json()["healthy"], 120, "health after the restart")

    for deployment in ("Ensemble", "Api"):
        with Load(served, prices, dates, clients=20, retry=True) as load:
            load.wait(10)
            victim, killed = _kill_one(deployment)
            load.wait(40, after=killed)
        failed = [a for a in load.answers if a.status != 200]
        assert not failed, (deployment, [(a.status, a.body, a.first) for a in failed[:3]])
        retried = [a.first for a in load.answers if a.attempts == 2]
        print(f"{deployment} replica killed: {len(load.answers)} answers, {len(retried)} retried once by "
              f"the client ({retried[:2]}), 0 failed after the retry")  # fmt: skip
        _comes_back(deployment, victim, 2 if deployment == "Api" else 1)
    wait_until(lambda: c.get("/api/health").json()["healthy"], 120, "health after the restarts")


def _stale_dates(served: Served, prices: Any) -> list[str]:
    """The dates on which every Prophet model is stale (a first request refits them: seconds)."""
    from ensemble import scoring
    from ensemble.registry import ModelRegistry

    lv = scoring.load_version(ModelRegistry(served.root), served.v1, ["prophet"])
    through = scoring.prophet_fitted_through(lv.models["prophet"])
    every = lv.settings.scoring.prophet_refit_every_days
    dates = sorted(prices["date"].unique())
    stale = [d for d in dates if len(scoring.stale_prophet_tickers(through, dates, d, every)) == len(through)]
    return [str(d)[:10] for d in stale]


def test_a_member_replica_killed_with_calls_in_flight(served: Served, prices: Any) -> None:
    """Requests on dates where every Prophet model is stale, so each Prophet call refits (seconds).
    One of the two Prophet replicas is killed while it has calls in flight (its queue length, read
    from the replica, > 0 twice 0.2 s apart): no client sees a failure, without retrying; the ensemble
    retried those calls on the other replica (its retry count grew) or answered without Prophet and
    said so; the replica comes back. The kill races the end of the calls, so a round in which it
    found none still in flight (nothing retried, nothing left out) is run again on new dates, up to 3
    rounds; every round must be failure-free, and one must show the retry or the leaving out."""
    from concurrent.futures import ThreadPoolExecutor

    import ray

    c = served.client
    stale = _stale_dates(served, prices)[:-5]  # the last dates are asked by the other tests
    rounds = [stale[len(stale) - 4 * (k + 1) : len(stale) - 4 * k] for k in range(3)]
    assert all(len(r) == 4 for r in rounds), stale
    tickers = [str(t) for t in sorted(prices["ticker"].unique())]

    def busy() -> str | None:
        for name in sorted(_replicas("prophet")):
            actor = ray.get_actor(name, namespace="serve")
            if ray.get(actor.get_num_ongoing_requests.remote(), timeout=10):
                time.sleep(0.2)  # still busy 0.2 s later: a refit in progress, not a call ending
                if ray.get(actor.get_num_ongoing_requests.remote(), timeout=10):
                    return name
        return None

    shown = []
    for days in rounds:
        wait_until(lambda: len(_replicas("prophet")) == 2, 300, "two prophet replicas")
        wait_until(lambda: c.get("/api/health").json()["healthy"], 120, "a healthy service")
        before = c.get("/api/health").json()["retries"].get("prophet", 0)

        def ask(i: int, days: list[str] = days) -> httpx.Response:
            with httpx.Client(base_url=served.url, timeout=600) as hc:
                return hc.post("/api/predict", json={"ticker": tickers[i], "as_of": days[i]})

        with ThreadPoolExecutor(len(days)) as ex:
            futures = [ex.submit(ask, i) for i in range(len(days))]
            victim = wait_until(busy, 120, "a prophet replica with calls in flight", 0.05)
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            answers = [f.result() for f in futures]
        try:
            failed = [(r.status_code, r.text[:300]) for r in answers if r.status_code != 200]
            assert not failed, failed
            retried = c.get("/api/health").json()["retries"].get("prophet", 0) - before
            without = [r.json() for r in answers if "prophet" in r.json()["left_out"]]
            for b in without:  # answered without it, and said so
                assert b["left_out"]["prophet"] and "prophet" not in b["members"], b
            print(f"\nprophet replica killed with calls in flight: {len(answers)} answers, 0 failed, "
                  f"{retried} member calls retried by the ensemble, {len(without)} answered without prophet")  # fmt: skip
        finally:
            _comes_back("prophet", victim, 2)
        shown.append((retried, len(without)))
        if retried or without:
            break
    assert any(r or w for r, w in shown), f"no round's kill found a call still in flight: {shown}"
    wait_until(lambda: c.get("/api/health").json()["healthy"], 120, "health after the restart")


# -- promotion, A/B, rollback, deploy -------------------------------------------------------------------
def test_promotion_ab_and_rollback_reach_the_running_replicas(served: Served, prices: Any) -> None:
    c, admin = served.client, {"X-API-Key": KEY}
    t = str(sorted(prices["ticker"].unique())[0])
    wait_until(_running, 300, "the application running")
    replicas = {m: _replicas(m) for m in TINY["models"]}
    # promote under concurrent load: no request fails, and once the switch is done every response
    # carries the new version
    seen: list[tuple[float, int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=served.url, timeout=300) as hc:
            while not stop.is_set():
                t0 = time.monotonic()
                p = hc.post("/api/predict", json={"ticker": t})
                seen.append((t0, p.status_code, p.json().get("version") if p.status_code == 200 else p.text))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for th in threads:
        th.start()
    time.sleep(1.0)
    r = c.post(f"/api/models/{served.v2}/promote", json={}, headers=admin)  # by the policy: it is better
    switched = time.monotonic()
    time.sleep(3.0)
    stop.set()
    for th in threads:
        th.join()
    assert r.status_code == 200 and r.json()["promoted"] is True and r.json()["version"] == served.v2, r.text
    assert seen and all(code == 200 for _, code, _ in seen), [x for x in seen if x[1] != 200][:3]
    after = [v for t0, _, v in seen if t0 > switched]
    assert after and set(after) == {served.v2}, (len(seen), len(after), set(after))
    assert {v for _, _, v in seen} == {served.v1, served.v2}
    for _ in range(6):  # every response now carries the new version
        p = c.post("/api/predict", json={"ticker": t})
        assert (
            p.status_code == 200
            and p.json()["version"] == served.v2
            and p.headers["X-Model-Version"] == served.v2
        )

    def on_v2() -> Any:  # a replica restarted by an earlier test may still be loading it
        h = c.get("/api/health").json()
        return (
            h
            if h["version"] == served.v2 and all(m["version"] == served.v2 for m in h["models"].values())
            else None
        )

    wait_until(on_v2, 120, "every member on the promoted version", 2.0)
    # an A/B split: all traffic to arm B (v1), then half, then none
    r = c.put("/api/ab", json={"version": served.v1, "weight": 1.0}, headers=admin)
    assert r.status_code == 200 and r.json()["serving"]["B"] == {"version": served.v1, "weight": 1.0}, r.text
    p = c.post("/api/predict", json={"ticker": t}).json()
    assert (p["arm"], p["version"]) == ("B", served.v1)
    c.put("/api/ab", json={"version": served.v1, "weight": 0.5}, headers=admin)
    before = c.get("/api/models").json()
    answers = [c.post("/api/predict", json={"ticker": t}).json() for _ in range(24)]
    assert {(b["arm"], b["version"]) for b in answers} == {("A", served.v2), ("B", served.v1)}
    # the per-arm counts are the whole service's: every ingress replica's (two here), exactly
    after = c.get("/api/models").json()
    assert before["counted_replicas"] == after["counted_replicas"] == 2, after
    for arm in ("A", "B"):
        sent = sum(b["arm"] == arm for b in answers)
        assert after["counts"].get(arm, 0) - before["counts"].get(arm, 0) == sent, (arm, before, after)
    c.put("/api/ab", json={"weight": 0}, headers=admin)
    assert c.post("/api/predict", json={"ticker": t}).json()["arm"] == "A"
    # rollback: back to v1 everywhere
    r = c.post("/api/rollback", json={}, headers=admin)
    assert r.status_code == 200 and r.json()["production"] == served.v1, r.text
    assert c.post("/api/predict", json={"ticker": t}).json()["version"] == served.v1
    # no replica was restarted by any of it (reconfigure and broadcasts only)
    assert {m: _replicas(m) for m in TINY["models"]} == replicas
    assert _running()


def test_jobs_deploy_checks_the_forecasts_recorded_at_training_time(served: Served, capsys: Any) -> None:
    """``jobs.train`` recorded sample forecasts (every member's and the ensemble's, through
    ``scoring.score``); the stored version forecasts them again to 1e-9, and a version whose recorded
    forecasts differ is refused while the running version keeps serving."""
    from ensemble.registry import ModelRegistry
    from jobs import deploy

    reg = ModelRegistry(served.root)
    rec = reg.load_extra(served.v1, "samples")
    split = reg.load_extra(served.v1, "training")["split"]
    assert rec["as_of"] == split["valid_end"] and len(rec["tickers"]) == 3
    assert sorted(rec["members"]) == sorted(TINY["models"])
    assert all(len(rec["members"][m]) == 3 for m in rec["members"])
    report = deploy.validate(served.root, served.v1)
    assert report["training_samples"]["tickers"] == rec["tickers"], report

    def drift(extras: dict[str, Any]) -> None:
        t = extras["samples"]["tickers"][0]
        extras["samples"]["members"]["lightgbm"][t]["pred_h5"] *= 1 + 1e-6

    drifted = clone_version(reg, served.v1, bump=3.0, edit_extras=drift)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENSEMBLE_API_KEY", KEY)
        before = served.client.get("/api/health").json()["version"]
        args = ["--registry", served.root, "--url", served.url, "--timeout", "300"]
        assert deploy.main(["--version", drifted, *args]) == 1
        err = capsys.readouterr().err
        assert "refused" in err and "recorded at training time" in err and "lightgbm" in err, err
        assert served.client.get("/api/health").json()["version"] == before  # it keeps serving
    assert reg.aliases()["production"] == before

    # through the running service: the version pinned, every value it answers against the recorded one
    good = deploy.check_served_samples(served.client, served.v1, rec, {"X-API-Key": KEY})
    assert good["tickers"] == rec["tickers"] and good["values"] >= 3 * 3 * 6, good  # 3 tickers x 3 h x 6+
    off = copy.deepcopy(rec)
    off["frame"][rec["tickers"][1]]["confidence_h20"] += 1e-6
    with pytest.raises(deploy.DeployRefusedError, match=r"service's forecasts .* confidence_h20"):
        deploy.deploy(served.url, served.v2, KEY, 300, recorded=off)
    assert served.client.get("/api/health").json()["version"] == before  # nothing was promoted
    assert reg.aliases()["production"] == before


def test_jobs_deploy_refuses_a_damaged_version_and_keeps_serving(served: Served, capsys: Any) -> None:
    from jobs import deploy

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENSEMBLE_API_KEY", KEY)
        args = ["--registry", served.root, "--url", served.url, "--timeout", "300"]
        before = served.client.get("/api/health").json()["version"]
        assert deploy.main(["--version", served.bad, *args]) == 1
        err = capsys.readouterr().err
        assert "refused" in err and "checksums" in err and "xgboost" in err, err
        assert served.client.get("/api/health").json()["version"] == before  # it keeps serving
        assert deploy.main(["--version", served.v2, *args]) == 0
        out = capsys.readouterr().out
        assert f"deployed {served.v2}" in out and "samples through the service {'as_of'" in out, out
    h = served.client.get("/api/health").json()
    assert h["version"] == served.v2 and h["healthy"]


# -- fuzzing from the OpenAPI schema ----------------------------------------------------------------------
def test_fuzzed_requests_never_get_a_5xx(served: Served) -> None:
    """Requests generated from the OpenAPI schema, valid and invalid (schemathesis + hypothesis): the
    service never answers 5xx. Admin routes are fuzzed without the key (401), so nothing changes."""
    schema = schemathesis.openapi.from_url(f"{served.url}/openapi.json")
    ops = [r.ok() for r in schema.get_all_operations()]
    assert len(ops) == 8
    calls: list[tuple[str, int]] = []
    for op in ops:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @hsettings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(case=op.as_strategy(generation_mode=mode))
            def fuzz(case: Any) -> None:
                r = case.call(base_url=served.url, timeout=300)
                calls.append((f"{case.method} {case.path}", r.status_code))
                assert r.status_code < 500, (
                    case.method,
                    case.formatted_path,
                    case.query,
                    case.body,
                    r.text[:500],
                )

            try:
                fuzz()
            except Unsatisfiable:  # no invalid request exists (an operation without parameters)
                assert mode is GenerationMode.NEGATIVE, op
    assert len(calls) >= 8 * 2 * 3
    assert {code for _, code in calls} & {200, 401, 404, 422}
    assert served.client.get("/api/health").json()["healthy"]


# -- monitoring (issue 15) ----------------------------------------------------------------------------------
def _metrics_text() -> str:
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port  # the node's Prometheus endpoint
    return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text


def test_served_forecasts_are_logged_and_health_shows_a_planted_accuracy_drop(
    served: Served, prices: Any
) -> None:
    """Every served forecast lands in the prediction log (source ``serve``, its version and arm, the
    numbers of the response); ``jobs.monitor`` over a stream with a planted accuracy drop raises the
    alert, and ``/api/health`` shows it in its ``monitoring`` section (the service stays healthy), as
    do the Prometheus metrics."""
    from ensemble.features.targets import realised_forward_returns
    from ensemble.predlog import ParquetLogBackend, PredictionLog, normalise
    from jobs import monitor as monitor_job

    c = served.client
    t = str(sorted(prices["ticker"].unique())[5])
    sent = pd.Timestamp.now(tz="UTC")
    r = c.post("/api/predict", json={"ticker": t, "horizon": 20})
    assert r.status_code == 200, r.text
    body = r.json()
    log = ParquetLogBackend(served.log_dir)

    def logged() -> (
        Any
    ):  # this request's rows: logged after it was sent, by the version and arm that answered
        rows = log.read()
        mine = (rows["source"] == "serve") & (rows["ticker"] == t) & (rows["logged_at"] >= sent)
        rows = rows[mine & (rows["version"] == body["version"]) & (rows["arm"] == body["arm"])]
        return [rows] if len(rows) else None

    (rows,) = wait_until(logged, 60, "the served forecast in the prediction log", 1.0)
    row = rows.iloc[-1]
    f = body["forecast"]["horizons"]["20"]
    assert row["horizon"] == 20 and str(row["as_of"].date()) == body["as_of"]
    assert set(rows["horizon"]) == {20}  # only the horizon served
    assert row["ensemble"] == pytest.approx(f["ensemble"], rel=1e-12)
    assert row["lightgbm"] == pytest.approx(f["members"]["lightgbm"], rel=1e-12)
    assert [row["lo80"], row["hi80"]] == pytest.approx(f["interval"]["80"], rel=1e-12)
    h = c.get("/api/health").json()
    assert h["healthy"] and h["monitoring"]["status"] == "no report", h["monitoring"]
    assert h["monitoring"]["prediction_log"]["enqueued"] >= 1

    # a stream the service "served" over the last 60 realised dates: the ensemble's forecasts noise,
    # lightgbm's informative; jobs.monitor raises the ensemble's accuracy alert only
    rng = np.random.default_rng(7)
    real = realised_forward_returns(prices, [5])
    days = sorted(prices["date"].unique())[-66:-6]
    real = real[real["date"].isin(days)]
    planted = normalise(pd.DataFrame({
        "logged_at": pd.Timestamp.now(tz="UTC"), "as_of": real["date"], "ticker": real["ticker"].astype(str),
        "horizon": 5, "version": served.v1, "arm": "A", "source": "serve",
        "ensemble": rng.normal(0, 0.03, len(real)),
        "lightgbm": real["target_h5"].to_numpy() + rng.normal(0, 0.005, len(real)),
    }))  # fmt: skip
    with PredictionLog(ParquetLogBackend(served.log_dir)) as plog:
        plog.log_records(planted, wait=True)
    report = monitor_job.run(
        registry_root=served.root, version=served.v1, log_dir=served.log_dir,
        overrides={"monitoring": {"rolling_window": 40, "min_rank_ic": 0.05, "min_tickers": 10}},
        out=str(Path(served.monitor_dir) / f"{str(days[-1])[:10]}.json"),
    )  # fmt: skip
    fired = {(a["rule"], a["subject"]) for a in report["alerts"]}
    assert ("rank_ic_low", f"{served.v1}/A/h5/ensemble") in fired, report["alerts"]
    assert not [s for _, s in fired if s.endswith("/lightgbm")], fired

    def alerting() -> Any:
        m = c.get("/api/health").json()["monitoring"]
        return m if m["status"] == "alerting" else None

    m = wait_until(alerting, 120, "the alert in /api/health", 2.0)
    assert m["report"] == report["out"] and m["version"] == served.v1
    assert {(a["rule"], a["subject"]) for a in m["alerts"]} == fired
    ens = next(x for x in m["rank_ic"] if x["model"] == "ensemble" and x["horizon"] == 5)
    assert abs(ens["rank_ic"]) < 0.05 < next(x for x in m["rank_ic"] if x["model"] == "lightgbm")["rank_ic"]
    assert c.get("/api/health").json()["healthy"]  # alerts do not take the service down

    def exported() -> Any:
        text = _metrics_text()
        return text if "ray_ensemble_monitoring_alerts" in text and "ray_ensemble_forecasts" in text else None

    text = wait_until(exported, 120, "the Prometheus metrics", 5.0)
    line = next(
        x for x in text.splitlines() if x.startswith("ray_ensemble_monitoring_alerts{") and served.v1 in x
    )
    assert float(line.rsplit(" ", 1)[1]) == len(fired), line
    assert any(x.startswith("ray_ensemble_forecasts") and 'arm="A"' in x for x in text.splitlines())
    assert "ray_serve_deployment_request_counter" in text  # Serve's own request counts per deployment


def test_the_retraining_gate_promotes_only_a_better_candidate(
    served: Served, prices: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``jobs.retrain`` trains a candidate through the one training path as of the walk-forward cutoff
    and scores it beside production on the window after it, both as served. Judged against realised
    returns planted to equal production's forecasts, the candidate is worse and is not promoted;
    against returns equal to the candidate's forecasts, it is better and is promoted through the
    running service under concurrent load: no request fails, and every response after the switch
    carries it. Both decisions and their evidence are recorded in the registry. The prices are loaded
    once: the candidate trains on the very table the gate judges it by."""
    import ensemble.data.sources as sources
    import ensemble.training as training
    from ensemble import retrain as gate_lib
    from ensemble.config import load_settings
    from ensemble.registry import ModelRegistry
    from jobs import retrain

    loads: list[str] = []
    real_load = sources.load_prices

    def counted_load(s: Any, *args: Any, **kwargs: Any) -> Any:
        loads.append(s.data.source)
        return real_load(s, *args, **kwargs)

    monkeypatch.setattr(sources, "load_prices", counted_load)
    monkeypatch.setattr(training, "load_prices", counted_load)

    c = served.client
    reg = ModelRegistry(served.root)
    wait_until(lambda: c.get("/api/health").json()["healthy"], 300, "a healthy service")
    production = c.get("/api/health").json()["version"]
    window = 30
    cutoff = gate_lib.cutoff_for(prices["date"], window, 5)
    dates = gate_lib.window_dates(prices["date"], cutoff, window, 5)
    assert len(dates) == window

    def planted(vid: str) -> Any:  # realised returns that rank exactly as ``vid``'s served forecasts
        lv = retrain.as_served(reg, vid, prices, cutoff, progress=False)
        f = gate_lib.score_on_dates(lv, prices, dates)
        return f.rename(columns={f"pred_h{h}": f"target_h{h}" for h in lv.horizons})

    settings = load_settings(overrides={**TINY, "registry_root": served.root})
    r1 = retrain.run(settings, registry_root=served.root, url=served.url, api_key=KEY, window=window,
                     progress=False, truth=planted(production))  # fmt: skip
    cand = r1["candidate"]
    assert loads == ["synthetic"], loads  # one load for training the candidate and for the gate
    print(
        f"\ngate 1: {r1['reason']}; candidate {r1['candidate_metrics']}, production {r1['production_metrics']}"
    )
    assert r1["window"] == {"cutoff": str(cutoff.date()), "first": str(dates[0].date()),
                            "last": str(dates[-1].date()), "dates": window}  # fmt: skip
    assert reg.load_extra(cand, "training")["split"]["valid_end"] == str(cutoff.date())  # trained as of it
    assert r1["production_metrics"]["rank_ic_h5"] == pytest.approx(1.0)
    assert r1["candidate_metrics"]["rank_ic_h5"] < 1.0 and not r1["promoted"], r1
    assert reg.aliases()["production"] == production and c.get("/api/health").json()["version"] == production
    assert json.loads(Path(r1["record"]).read_text())["promote"] is False

    answers: list[tuple[float, float, int, str]] = []  # (sent, answered, status, version)
    stop = threading.Event()
    tickers = [str(t) for t in sorted(prices["ticker"].unique())]

    def client(i: int) -> None:
        with httpx.Client(base_url=served.url, timeout=300) as hc:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = hc.post("/api/predict", json={"ticker": tickers[i], "horizon": 5})
                    got = r.json()["version"] if r.status_code == 200 else r.text[:300]
                    answers.append((t0, time.monotonic(), r.status_code, got))
                except Exception as exc:  # any failure is an answer the test sees
                    answers.append((t0, time.monotonic(), -1, f"{type(exc).__name__}: {exc}"))
                time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(4)]
    for th in threads:
        th.start()
    try:
        r2 = retrain.run(settings, registry_root=served.root, candidate=cand, url=served.url, api_key=KEY,
                         window=window, progress=False, truth=planted(cand))  # fmt: skip
        switched = time.monotonic()
        wait_until(lambda: sum(a[1] > switched and a[0] > switched for a in answers) >= 8, 120,
                   "answers to requests sent after the switch", 0.2)  # fmt: skip
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=330)
    print(f"gate 2: {r2['reason']}; {len(answers)} requests during it")
    assert r2["promoted"] and r2["candidate_metrics"]["rank_ic_h5"] == pytest.approx(1.0), r2
    assert r2["service"]["version"] == cand and r2["service"]["served_samples"]["values"] > 0, r2["service"]
    failed = [a for a in answers if a[2] != 200]
    assert not failed and len(answers) >= 8, failed[:3]
    assert all(th.is_alive() is False for th in threads)
    after = {v for sent, _, _, v in answers if sent > switched}
    assert after == {cand}, (after, len(answers), answers[-3:])
    assert reg.aliases()["production"] == cand
    assert reg.alias_history("production")[-1]["reason"].startswith("jobs.retrain: ")
    assert json.loads(Path(r2["record"]).read_text())["promoted"] is True
