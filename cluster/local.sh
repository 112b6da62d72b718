#!/usr/bin/env bash
# Local Ray cluster on this machine: start | add-worker | status | stop (see jobs/local_cluster.py).
#   cluster/local.sh start --num-cpus 2        # head node, token auth, 127.0.0.1, dashboard :8265
#   cluster/local.sh add-worker --num-cpus 1   # one more node on the same machine
#   eval "$(cluster/local.sh env)"             # RAY_AUTH_MODE / RAY_AUTH_TOKEN_PATH / RAY_ADDRESS for clients
#   cluster/local.sh stop                      # stops exactly the nodes it started, by process group
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${1:-}" = "env" ]; then
  "$PY" -m jobs.local_cluster start --help >/dev/null
  "$PY" - <<'PYEOF'
from jobs.local_cluster import load_state, state_dir
st = load_state(state_dir())
if st is None:
    raise SystemExit("no local cluster recorded: run cluster/local.sh start")
print("\n".join(f"export {k}={v}" for k, v in st.env().items()))
PYEOF
  exit 0
fi
exec "$PY" -m jobs.local_cluster "$@"
