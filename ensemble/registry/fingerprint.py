"""A stable sha256 of a training table, recorded in every version's manifest."""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from ensemble.registry.fsio import dumps


def data_fingerprint(df: pd.DataFrame) -> str:
    """sha256 over a canonical form of ``df``: independent of row and column order, sensitive to any cell,
    column name or dtype change; stable across runs (pandas' row hashing uses a fixed key).

    Rows are hashed with :func:`pandas.util.hash_pandas_object` over the columns in sorted name order and
    the row hashes are sorted (a multiset: duplicate rows count). A named index (e.g. date/ticker) is
    treated as columns; an unnamed one is row position only (a shuffled frame keeps its old labels) and
    is ignored.
    """
    if any(n is not None for n in df.index.names):
        df = df.reset_index()
    names = [str(c) for c in df.columns]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ValueError(f"data_fingerprint: duplicate column names {dup}")
    order = sorted(range(len(names)), key=lambda i: names[i])
    canon = df.iloc[:, order]
    canon.columns = [names[i] for i in order]
    header = {"columns": [[c, str(canon[c].dtype)] for c in canon.columns], "rows": len(canon)}
    h = hashlib.sha256(dumps(header))
    if len(canon) and len(canon.columns):
        row_hashes = pd.util.hash_pandas_object(canon, index=False).to_numpy(dtype=np.uint64)
        h.update(np.sort(row_hashes).astype("<u8").tobytes())
    return h.hexdigest()
