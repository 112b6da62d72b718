"""The ``recommendations`` table in PostgreSQL: one row per (as_of, ticker), with the model version
that produced it.

:meth:`RecommendationStore.write` replaces every row of the as-of dates it is given in one transaction
(``DELETE`` of those dates, then ``INSERT``), so re-running a date replaces its rows and never
duplicates them; a ticker that is no longer recommended disappears with the rest of its date. The
columns are fixed (the action horizon's numbers, the risk metrics, the action and the weight); every
horizon's forecast, price target and interval travel in the ``forecasts`` JSONB column. Identifiers are
quoted with ``psycopg2.sql``; every value is a bound parameter. The DSN comes from the caller or the
environment variable named by ``postgres.dsn_env`` (the conventions of :mod:`ensemble.data.store`).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

import numpy as np
import pandas as pd
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from psycopg2.extras import Json, execute_values

from ensemble.config import PostgresConfig
from ensemble.data.store import check_table_name, pg_transaction, redact_dsn

logger = logging.getLogger(__name__)

# (column, SQL type, where its value comes from in recommend()'s frame at the action horizon h)
COLUMNS: tuple[tuple[str, str], ...] = (
    ("as_of", "date NOT NULL"),
    ("ticker", "text NOT NULL"),
    ("version", "text NOT NULL"),
    ("action", "text NOT NULL"),
    ("horizon", "integer NOT NULL"),
    ("close", "double precision"),
    ("expected_return", "double precision"),
    ("excess_return", "double precision"),
    ("price_target", "double precision"),
    ("confidence", "double precision"),
    ("risk_adjusted", "double precision"),
    ("weight", "double precision"),
    ("ann_vol", "double precision"),
    ("var", "double precision"),
    ("cvar", "double precision"),
    ("max_drawdown", "double precision"),
    ("beta", "double precision"),
    ("top_features", "text"),
    ("forecasts", "jsonb"),
)
NAMES: tuple[str, ...] = tuple(c for c, _ in COLUMNS)


def _num(v: Any) -> float | None:
    f = float(v)
    return f if math.isfinite(f) else None


def rows_from_frame(recs: pd.DataFrame) -> list[tuple[Any, ...]]:
    """The table's rows (in :data:`NAMES` order) from :func:`ensemble.recommend.recommend`'s frame."""
    per_h = [c for c in recs.columns if "_h" in c and c.rsplit("_h", 1)[1].isdigit()]
    out = []
    for r in recs.to_dict("records"):
        h = int(r["horizon"])
        forecasts = {c: _num(r[c]) for c in per_h}
        out.append(
            (
                pd.Timestamp(r["as_of"]).date(),
                str(r["ticker"]),
                str(r["version"]),
                str(r["action"]),
                h,
                _num(r["close"]),
                _num(r[f"exp_ret_h{h}"]),
                _num(r[f"excess_h{h}"]),
                _num(r[f"price_target_h{h}"]),
                _num(r[f"confidence_h{h}"]),
                _num(r["risk_adjusted"]),
                _num(r["weight"]),
                _num(r["ann_vol"]),
                _num(r["var"]),
                _num(r["cvar"]),
                _num(r["max_drawdown"]),
                _num(r["beta"]),
                str(r.get("top_features", "") or ""),
                Json(forecasts, dumps=lambda o: json.dumps(o, sort_keys=True)),
            )
        )
    return out


class RecommendationStore:
    """The ``recommendations`` table (primary key (as_of, ticker))."""

    def __init__(self, dsn: str | None = None, table: str = "recommendations") -> None:
        cfg = PostgresConfig()
        dsn = dsn or cfg.dsn()
        if not dsn:
            raise ValueError(f"no PostgreSQL DSN: pass one or set the environment variable {cfg.dsn_env}")
        self._dsn = dsn
        self.table = check_table_name(table)
        self._ident = sql.Identifier(self.table)

    def __repr__(self) -> str:
        return f"RecommendationStore({redact_dsn(self._dsn)!r}, table={self.table!r})"

    def _connect(self) -> AbstractContextManager[PgConnection]:
        return pg_transaction(self._dsn)

    def _create(self, cur: Any) -> None:
        # queue behind any other writer creating this table (concurrent CREATE IF NOT EXISTS can fail)
        cur.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(coalesce(current_schema(), '') || '.' || %s, 0))",
            (self.table,),
        )
        cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t)) for c, t in COLUMNS)
        cur.execute(
            sql.SQL("CREATE TABLE IF NOT EXISTS {t} ({cols}, PRIMARY KEY (as_of, ticker))").format(
                t=self._ident, cols=cols
            )
        )

    def create_schema(self) -> None:
        with self._connect() as conn, conn.cursor() as cur:
            self._create(cur)

    def write(self, recs: pd.DataFrame) -> int:
        """Replace the rows of every as-of date in ``recs`` by ``recs``' rows, in one transaction;
        returns the number of rows written."""
        rows = rows_from_frame(recs)
        dates = sorted({r[0] for r in rows})
        with self._connect() as conn, conn.cursor() as cur:
            self._create(cur)
            cur.execute(sql.SQL("LOCK TABLE {t} IN SHARE ROW EXCLUSIVE MODE").format(t=self._ident))
            cur.execute(sql.SQL("DELETE FROM {t} WHERE as_of = ANY(%s)").format(t=self._ident), (dates,))
            execute_values(
                cur,
                sql.SQL("INSERT INTO {t} ({cols}) VALUES %s").format(
                    t=self._ident, cols=sql.SQL(", ").join(map(sql.Identifier, NAMES))
                ),
                rows,
                page_size=1000,
            )
        logger.info("recommendations: %d rows for %s written to %s", len(rows), dates, self.table)
        return len(rows)

    def read(self, as_of: Any = None, tickers: Sequence[str] | None = None) -> pd.DataFrame:
        """The table's rows (all, or of ``as_of`` / ``tickers``), sorted by (as_of, ticker)."""
        where: list[sql.Composable] = []
        params: list[Any] = []
        if as_of is not None:
            where.append(sql.SQL("as_of = %s"))
            params.append(pd.Timestamp(as_of).date())
        if tickers is not None:
            where.append(sql.SQL("ticker = ANY(%s)"))
            params.append([str(t) for t in tickers])
        query = sql.SQL('SELECT {cols} FROM {t}{w} ORDER BY as_of, ticker COLLATE "C"').format(
            cols=sql.SQL(", ").join(map(sql.Identifier, NAMES)),
            t=self._ident,
            w=sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL(""),
        )
        with self._connect() as conn, conn.cursor() as cur:
            cur.execute(query, params)
            data = cur.fetchall()
        df = pd.DataFrame(data, columns=list(NAMES))
        num = [c for c, t in COLUMNS if t.startswith("double")]
        df[num] = df[num].astype(np.float64)
        return df
