"""A head and two worker nodes (ray.cluster_utils.Cluster) on this machine: the Prophet fan-out and the
tuning trials spread over the nodes.

The head offers no CPU, so every task and trial must run on a worker node; each worker offers one,
so the two nodes are used side by side.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ensemble.config import DEFAULT_HORIZONS, SyntheticConfig, load_settings
from ensemble.cost import CostMeter
from ensemble.data.synthetic import generate_market

pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster(ray_auth_disabled: None) -> Iterator[dict[str, str]]:
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 150 * 2**20},
    )
    workers = [c.add_node(num_cpus=1, object_store_memory=150 * 2**20) for _ in range(2)]
    try:
        c.wait_for_nodes()
        ray.init(address=c.address)
        head_id = c.head_node.node_id
        yield {"head": head_id, "workers": ",".join(w.node_id for w in workers)}
    finally:
        ray.shutdown()
        c.shutdown()


def test_cluster_has_a_head_and_two_workers(cluster: dict[str, str]) -> None:
    import ray

    alive = [n for n in ray.nodes() if n["Alive"]]
    assert len(alive) == 3
    assert ray.cluster_resources()["CPU"] == 2.0


def test_prophet_fanout_spreads_over_the_worker_nodes(cluster: dict[str, str]) -> None:
    from jobs.ray_prophet import fit_prophet_fanout

    prices = generate_market(SyntheticConfig(n_tickers=12, n_days=200, n_sectors=3, seed=4)).prices
    r = fit_prophet_fanout(prices, horizons=DEFAULT_HORIZONS, params={}, chunk_size=2, progress=False)
    workers = set(cluster["workers"].split(","))
    assert r.n_chunks == 6 and not r.failures
    assert set(r.tickers_per_node) == workers  # both worker nodes fitted tickers, the head none
    assert sum(r.tickers_per_node.values()) == 12
    pred = r.model.predict(prices)
    assert np.isfinite(pred[[f"pred_h{h}" for h in DEFAULT_HORIZONS]].to_numpy()).all()


def test_tuning_trials_spread_over_the_worker_nodes(cluster: dict[str, str], tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from _frames import make_feature_frame

    from jobs.ray_tune_trees import tune_tree_model

    f = make_feature_frame(n_tickers=12, n_days=200, seed=3)
    dates = np.sort(f["date"].unique())
    train = f[f["date"] < dates[120]].reset_index(drop=True)
    valid = f[f["date"] >= dates[125]].reset_index(drop=True)
    s = load_settings(
        overrides={
            "training": {"tuning_trials": 6},
            "ray": {"trial_cpus": 1.0, "max_concurrent_trials": 2, "asha_grace_period": 5},
            "models": {"lightgbm": {"n_estimators": 40, "early_stopping_rounds": 0}},
        }
    )
    meter = CostMeter.from_config(s.training)
    out = tune_tree_model("lightgbm", train, valid, s, meter, storage_path=str(tmp_path))
    workers = set(cluster["workers"].split(","))
    assert out.trials_run == 6
    assert set(out.trial_nodes.values()) == workers  # trials ran on both worker nodes, none on the head
    assert isinstance(out.model.predict(valid), pd.DataFrame)
