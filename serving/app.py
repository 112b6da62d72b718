"""The Serve application: one deployment per member, the Ensemble, the FastAPI ingress.

A typed application builder (``import_path: serving.app:build_app`` with ``args:`` in
``cluster/serve.yaml``; or ``serve run serving.app:build_app registry=... version=...``), composed with
``.bind()`` as in Ray's ``doc_code/getting_started/model_graph.py``. Resources, replicas and
autoscaling come from the Serve config; the defaults here ask for fractions of a CPU so that the
whole application fits 2 cores.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray.serve import Application

from ensemble.config import MODEL_NAMES
from serving.api import Api
from serving.ensemble import Ensemble
from serving.members import Member


class AppArgs(BaseModel):
    """What the application serves (``args:`` of the Serve config)."""

    model_config = ConfigDict(extra="forbid")

    registry: str = Field("artifacts/registry", description="registry root: an absolute path or a URI")
    version: str = Field("production", description="an alias (follows promotions) or a version id")
    members: list[str] = Field(default_factory=lambda: list(MODEL_NAMES))
    prophet_shards: int = Field(2, ge=1, le=64, description="ticker shards of a per-ticker member")
    member_timeout_s: float = Field(60.0, gt=0)
    cache_ttl_s: float = Field(60.0, ge=0)
    api_key_env: str = "ENSEMBLE_API_KEY"
    log: bool = Field(True, description="log every served forecast (the prediction log, source 'serve')")
    log_dir: str | None = Field(
        None, description="Parquet directory of the prediction log; default: the served version's "
        "monitoring.log_dir (PostgreSQL instead when its DSN variable is set)",
    )  # fmt: skip
    monitor_dir: str | None = Field(
        None, description="where jobs.monitor writes its reports (the latest is shown in /api/health); "
        "default: the served version's monitoring.out_dir",
    )  # fmt: skip
    num_replicas: dict[str, int] = Field(
        default_factory=dict,
        description="fixed replica counts by deployment name (a member, Ensemble, Api); "
        "the Serve config's autoscaling_config replaces them",
    )

    @field_validator("num_replicas")
    @classmethod
    def _deployments(cls, v: dict[str, int]) -> dict[str, int]:
        unknown = sorted(set(v) - {*MODEL_NAMES, "Ensemble", "Api"})
        if unknown or any(n < 1 for n in v.values()):
            raise ValueError(
                f"num_replicas: deployments of {[*MODEL_NAMES, 'Ensemble', 'Api']}, >= 1; got {v}"
            )
        return v

    @field_validator("members")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(MODEL_NAMES))
        if unknown or not v:
            raise ValueError(f"members must name models of {list(MODEL_NAMES)}, got {v}")
        return list(dict.fromkeys(v))


def member_config(args: AppArgs) -> dict[str, Any]:
    return {"versions": [args.version], "shards": args.prophet_shards}


def build_app(args: dict[str, Any] | AppArgs) -> Application:
    a = args if isinstance(args, AppArgs) else AppArgs.model_validate(args)

    def replicas(name: str) -> dict[str, Any]:
        return {"num_replicas": a.num_replicas[name]} if name in a.num_replicas else {}

    members = {
        name: Member.options(name=name, user_config=member_config(a), **replicas(name)).bind(name, a.registry)
        for name in a.members
    }
    ensemble = Ensemble.options(
        **replicas("Ensemble"),
        user_config={
            "versions": [a.version],
            "shards": a.prophet_shards,
            "member_timeout_s": a.member_timeout_s,
            "cache_ttl_s": a.cache_ttl_s,
            "log": a.log,
            "log_dir": a.log_dir,
        },
    ).bind(members, a.registry)
    api_config = {"version": a.version, "monitor_dir": a.monitor_dir}
    return Api.options(user_config=api_config, **replicas("Api")).bind(
        ensemble, members, a.registry, a.api_key_env, a.prophet_shards
    )
