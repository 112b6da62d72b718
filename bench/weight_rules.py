"""Simple ways of weighting the members, read off their validation figures, scored on the test dates
beside the best member: whether any of them would have put the ensemble at or above its best member
(issue 12's synthetic must-show). A diagnostic, like ``bench/quality.py``'s ``ensemble_ceiling``:
each rule is fixed before the test dates are read, and the test figures are reported, never used to
choose a default (``bench/ensemble_gate.py`` chooses, on validation dates only).

Reads folders written by ``bench/quality.py --save-preds DIR``. The rules, per horizon, from each
member's validation Rank IC (``v``):

* ``prior``: the configured weights (``ensemble.weights``), what the learned ensemble keeps when the
  validation dates give no reason to move;
* ``equal``: every member alike;
* ``validation_ic``: proportional to ``max(v, 0)``;
* ``prior_x_validation_ic``: the prior times ``max(v, 0)``;
* ``validation_best``: the member with the best ``v`` alone.

Each is an :class:`EnsembleForecaster` with those weights (``mode='fixed'``: the members' per-date
z-scores, renormalised over the members present), fitted on the validation dates. Printed: each
rule's test Rank IC per horizon, the best member's, and whether the rule reached it everywhere.

    python bench/weight_rules.py DIR [DIR ...]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from quality import HORIZONS  # noqa: E402

from ensemble.backtest.metrics import rank_ic_by_date  # noqa: E402
from ensemble.backtest.splits import window  # noqa: E402
from ensemble.config import EnsembleConfig  # noqa: E402
from ensemble.models.ensemble import EnsembleForecaster  # noqa: E402

Rule = Callable[[dict[str, float], dict[str, float]], dict[str, float]]  # (prior, validation IC) -> weights

RULES: dict[str, Rule] = {
    "prior": lambda prior, v: dict(prior),
    "equal": lambda prior, v: dict.fromkeys(v, 1.0),
    "validation_ic": lambda prior, v: {m: max(x, 0.0) for m, x in v.items()},
    "prior_x_validation_ic": lambda prior, v: {m: prior.get(m, 0.0) * max(x, 0.0) for m, x in v.items()},
    "validation_best": lambda prior, v: {max(v, key=lambda m: v[m]): 1.0},
}


def _ic(pred: pd.DataFrame, truth: pd.DataFrame, h: int) -> float:
    df = pred.merge(truth, on=["date", "ticker"])
    return float(rank_ic_by_date(df, f"pred_h{h}", f"target_h{h}").mean())


def score_folder(folder: Path) -> dict[str, dict[int, float | None]]:
    """Per rule (and ``best_member``), the test Rank IC per horizon (None: the rule weights nothing)."""
    sp = {k: pd.Timestamp(v) for k, v in json.loads((folder / "split.json").read_text()).items()}
    truth = pd.read_parquet(folder / "truth.parquet")
    vtruth = window(truth, sp["valid_start"], sp["valid_end"])  # labels purged at the validation end
    test = truth[truth["date"] >= sp["test_start"]].reset_index(drop=True)
    names = [p.name[len("valid_") : -len(".parquet")] for p in sorted(folder.glob("valid_*.parquet"))]
    valid = {m: pd.read_parquet(folder / f"valid_{m}.parquet") for m in names}
    tests = {m: pd.read_parquet(folder / f"test_{m}.parquet") for m in names}
    ec = EnsembleConfig()
    prior = {m: w for m, w in ec.weights.items() if m in names}
    out: dict[str, dict[int, float | None]] = {r: {} for r in [*RULES, "best_member"]}
    for h in HORIZONS:
        v = {m: _ic(valid[m], vtruth, h) for m in names}
        out["best_member"][h] = max(_ic(tests[m], test, h) for m in names)
        for rule, weights_of in RULES.items():
            w = {m: x for m, x in weights_of(prior, v).items() if x > 0}
            if not w:
                out[rule][h] = None
                continue
            ens = EnsembleForecaster(w, (h,), mode="fixed", levels=ec.interval_levels)
            ens.fit({m: valid[m] for m in w}, vtruth)
            out[rule][h] = _ic(ens.predict({m: tests[m] for m in w}, test), test, h)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="+", type=Path, help="bench/quality.py --save-preds folders")
    args = ap.parse_args()
    for folder in args.folders:
        res = score_folder(folder)
        best = res["best_member"]
        print(f"\n== {folder}: test Rank IC at {' / '.join(map(str, HORIZONS))} days")
        for rule, ics in res.items():
            cells = " / ".join("   n/a" if ics[h] is None else f"{ics[h]:+.4f}" for h in HORIZONS)
            reached = all(ics[h] is not None and ics[h] >= best[h] - 1e-12 for h in HORIZONS)
            note = (
                "" if rule == "best_member" else ("  reaches the best member everywhere" if reached else "")
            )
            print(f"  {rule:<24s}{cells}{note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
