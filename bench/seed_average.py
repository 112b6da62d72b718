"""Do the sequence members gain from averaging their forecasts over seeds? Validation dates only.

Reads ``bench/quality.py --save-preds`` folders of one source and split, one per seed (the default
run is seed 0; another seed: ``--models lstm transformer --params '{"lstm": {"seed": 1},
"transformer": {"seed": 1}}'``). Every date after the validation end is cut off on load (labels
realised after it purged, bench/ensemble_gate.py's ``validation_only``): the test dates are never
read. Prints each member's validation Rank IC per seed, the seeds' mean, and that of the forecasts
averaged over the seeds (the row-wise mean of the raw forecasts,
:func:`ensemble.backtest.walkforward.mean_preds`, as the walk-forward averages its seeds). With
``--out DIR`` it writes the first folder's validation forecasts and truth with the averaged members
in place, for ``bench/ensemble_gate.py DIR`` (the learned ensemble, out of fold).

    python bench/seed_average.py DIR_seed0 DIR_seed1 DIR_seed2 --out DIR_averaged

With no folders (``make bench`` runs every script bare) it says what it needs and exits 0.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ensemble_gate import HORIZONS, validation_only  # noqa: E402

from ensemble.backtest.metrics import forecast_metrics  # noqa: E402
from ensemble.backtest.walkforward import mean_preds  # noqa: E402
from ensemble.models.base import KEY_COLUMNS  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folders", nargs="*", type=Path, help="--save-preds folders, one per seed")
    ap.add_argument("--members", nargs="+", default=["lstm", "transformer"])
    ap.add_argument("--out", type=Path, help="write the first folder's validation part, members averaged")
    args = ap.parse_args()
    if not args.folders:
        print(
            "bench/seed_average.py: nothing to average; give two or more bench/quality.py --save-preds folders"
        )
        return 0
    if len(args.folders) < 2:
        ap.error("give at least two folders (seeds) to average")
    if args.out is not None and args.out.resolve() in {f.resolve() for f in args.folders}:
        ap.error(f"--out {args.out} is one of the input folders: it would overwrite their forecasts")
    loaded = [validation_only(f) for f in args.folders]
    vtruth = loaded[0][1]
    if any(not v.equals(vtruth) for _, v, _ in loaded[1:]):
        ap.error("the folders' validation truth differs: not the same source and split")
    keys = list(KEY_COLUMNS)
    for m in args.members:
        for f, (members, _, _) in zip(args.folders, loaded, strict=True):
            if m not in members:
                ap.error(f"{f} has no validation forecasts of {m!r} (valid_{m}.parquet)")
        rows = [members[m][keys].sort_values(keys).reset_index(drop=True) for members, _, _ in loaded]
        if any(not r.equals(rows[0]) for r in rows[1:]):
            ap.error(f"the folders' {m} forecasts are not on the same (date, ticker) rows")
    averaged = {}
    print(f"validation Rank IC at {' / '.join(f'{h}' for h in HORIZONS)} days, {len(args.folders)} seeds")
    for m in args.members:
        per_seed = [forecast_metrics(members[m], vtruth, HORIZONS) for members, _, _ in loaded]
        averaged[m] = mean_preds([members[m] for members, _, _ in loaded], HORIZONS)
        avg = forecast_metrics(averaged[m], vtruth, HORIZONS)
        for label, row in [*((f"seed folder {i}", s) for i, s in enumerate(per_seed)), ("averaged", avg)]:
            print(f"  {m:12s} {label:14s}" + "".join(f"{row[f'rank_ic_h{h}']:+9.4f}" for h in HORIZONS))
        mean = [np.mean([s[f"rank_ic_h{h}"] for s in per_seed]) for h in HORIZONS]
        print(f"  {m:12s} {'seeds mean':14s}" + "".join(f"{x:+9.4f}" for x in mean))
        print(
            f"  {m:12s} {'gain':14s}"
            + "".join(f"{avg[f'rank_ic_h{h}'] - x:+9.4f}" for h, x in zip(HORIZONS, mean, strict=True))
        )
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        first = args.folders[0]
        for name in ["split.json", *(p.name for p in first.glob("valid_*.parquet"))]:
            shutil.copy(first / name, args.out / name)
        loaded[0][2].to_parquet(
            args.out / "truth.parquet"
        )  # its history: labels purged at the validation end
        for m, p in averaged.items():
            p.to_parquet(args.out / f"valid_{m}.parquet")
        print(f"written: {args.out} (validation forecasts only; bench/ensemble_gate.py {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
