"""Start and stop a local Ray cluster (a head node, optionally worker nodes) on this machine.

    python -m jobs.local_cluster start [--num-cpus 2] [--port 6379] [--dashboard-port 8265]
    python -m jobs.local_cluster add-worker [--num-cpus 1]
    python -m jobs.local_cluster status
    python -m jobs.local_cluster stop

Each node runs as ``ray start --block`` in its own process group; its id is written under the
state directory (``.ray-local/`` by default, or ``$ENSEMBLE_RAY_STATE``). ``stop`` ends exactly
those process groups (SIGTERM, then SIGKILL after a grace period): it never kills by name and
never touches a Ray that it did not start.

Authentication: token authentication is on by default (``RAY_AUTH_MODE=token``); the token is
generated once into ``<state>/auth_token`` (mode 0600) and exported as ``RAY_AUTH_TOKEN_PATH`` to
the nodes. Clients (``ray job submit``) need the same variable: ``start`` prints the line to
export. ``--auth disabled`` turns it off explicitly. Everything binds to 127.0.0.1.
Ray Serve's HTTP proxy is not covered by the token: serving has its own API key for admin routes.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

STATE_ENV = "ENSEMBLE_RAY_STATE"
HOST = "127.0.0.1"


@dataclass
class ClusterState:
    port: int
    dashboard_port: int
    auth: str
    token_path: str | None
    head_pid: int
    worker_pids: list[int] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{HOST}:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Environment a client needs to talk to this cluster."""
        e = {"RAY_AUTH_MODE": self.auth, "RAY_ADDRESS": self.address}
        if self.token_path:
            e["RAY_AUTH_TOKEN_PATH"] = self.token_path
        return e


def state_dir(path: str | Path | None = None) -> Path:
    return Path(path or os.environ.get(STATE_ENV, ".ray-local")).resolve()


def _state_file(sdir: Path) -> Path:
    return sdir / "cluster.json"


def load_state(sdir: Path) -> ClusterState | None:
    f = _state_file(sdir)
    if not f.exists():
        return None
    return ClusterState(**json.loads(f.read_text()))


def _save_state(sdir: Path, st: ClusterState) -> None:
    tmp = _state_file(sdir).with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(st), indent=2))
    os.replace(tmp, _state_file(sdir))


def _ray_bin() -> str:
    cand = Path(sys.executable).with_name("ray")
    return str(cand) if cand.exists() else "ray"


def _node_env(auth: str, token_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["RAY_AUTH_MODE"] = auth
    if token_path:
        env["RAY_AUTH_TOKEN_PATH"] = token_path
    else:
        env.pop("RAY_AUTH_TOKEN_PATH", None)
    # job drivers inherit the node's PATH: put this interpreter's bin first so `python` is ours
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _spawn(args: list[str], env: dict[str, str], log: Path) -> int:
    with log.open("ab") as fh:
        proc = subprocess.Popen(args, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    return proc.pid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _wait_dashboard(url: str, pid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            raise RuntimeError("the Ray head node exited during start-up; see its log in the state directory")
        try:
            with urllib.request.urlopen(f"{url}/api/version", timeout=2) as r:  # noqa: S310 (loopback only)
                if r.status == 200:
                    return
        except urllib.error.HTTPError:  # it answers (401 without the token under token auth): it is up
            return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"Ray dashboard at {url} did not come up within {timeout:.0f}s")


def start(
    num_cpus: int = 2,
    port: int = 6379,
    dashboard_port: int = 8265,
    auth: str = "token",
    num_gpus: int | None = None,
    sdir: str | Path | None = None,
    timeout: float = 90.0,
) -> ClusterState:
    """Start a head node (blocking until its dashboard answers) and record it in the state dir."""
    d = state_dir(sdir)
    d.mkdir(parents=True, exist_ok=True)
    existing = load_state(d)
    if existing and _alive(existing.head_pid):
        raise RuntimeError(
            f"a local cluster started from {d} is already running (head pid {existing.head_pid})"
        )
    if auth not in ("token", "disabled"):
        raise ValueError(f"auth must be 'token' or 'disabled', got {auth!r}")
    token_path = None
    if auth == "token":
        tp = d / "auth_token"
        if not tp.exists():
            fd = os.open(tp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_hex(32))
        token_path = str(tp)
    args = [
        _ray_bin(),
        "start",
        "--head",
        "--block",
        "--node-ip-address",
        HOST,
        "--port",
        str(port),
        "--dashboard-host",
        HOST,
        "--dashboard-port",
        str(dashboard_port),
        "--num-cpus",
        str(num_cpus),
        "--disable-usage-stats",
        # fixed defaults (10001, 52365) would collide with any other Ray head on this machine
        "--ray-client-server-port",
        str(_free_port()),
        "--dashboard-agent-listen-port",
        str(_free_port()),
    ]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    pid = _spawn(args, _node_env(auth, token_path), d / "head.log")
    st = ClusterState(
        port=port, dashboard_port=dashboard_port, auth=auth, token_path=token_path, head_pid=pid
    )
    _save_state(d, st)
    try:
        _wait_dashboard(st.dashboard_url, pid, timeout)
    except Exception:
        _stop_group(pid)
        _state_file(d).unlink(missing_ok=True)
        raise
    return st


def add_worker(num_cpus: int = 1, num_gpus: int | None = None, sdir: str | Path | None = None) -> int:
    """Join one more node on this machine to the running local cluster; returns its pid."""
    d = state_dir(sdir)
    st = load_state(d)
    if st is None or not _alive(st.head_pid):
        raise RuntimeError(f"no running local cluster recorded in {d}: run `start` first")
    args = [
        _ray_bin(),
        "start",
        "--block",
        "--address",
        st.address,
        "--node-ip-address",
        HOST,
        "--num-cpus",
        str(num_cpus),
        "--disable-usage-stats",
        "--dashboard-agent-listen-port",
        str(_free_port()),
    ]
    if num_gpus is not None:
        args += ["--num-gpus", str(num_gpus)]
    pid = _spawn(args, _node_env(st.auth, st.token_path), d / f"worker-{len(st.worker_pids)}.log")
    st.worker_pids.append(pid)
    _save_state(d, st)
    return pid


def _stop_group(pid: int, grace: float = 10.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    try:
        os.killpg(pid, signal.SIGKILL)  # what SIGTERM left (ray's gcs_server often ignores it)
    except ProcessLookupError:
        pass


def stop(sdir: str | Path | None = None) -> int:
    """Stop the nodes this state dir started (workers first). Returns how many groups were signalled."""
    d = state_dir(sdir)
    st = load_state(d)
    if st is None:
        return 0
    pids = [*reversed(st.worker_pids), st.head_pid]
    for pid in pids:
        _stop_group(pid)
    _state_file(d).unlink(missing_ok=True)
    _forget_current_cluster(st.port)
    return len(pids)


def _forget_current_cluster(port: int) -> None:
    """Remove Ray's record of the latest started cluster if it names the head we just stopped.

    ``ray start --head`` writes its GCS address to ``<RAY_TMPDIR or /tmp>/ray/ray_current_cluster`` and
    ``ray stop`` removes it; stopping by process group does not, and a later bare ``ray.init()`` would
    then wait on a dead address."""
    f = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
    try:
        recorded = f.read_text().strip()
    except OSError:
        return
    if recorded.rsplit(":", 1)[-1] == str(port):
        f.unlink(missing_ok=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Local Ray cluster: start | add-worker | status | stop")
    ap.add_argument("command", choices=["start", "add-worker", "status", "stop"])
    ap.add_argument("--num-cpus", type=int, default=None)
    ap.add_argument("--num-gpus", type=int, default=None)
    ap.add_argument("--port", type=int, default=6379)
    ap.add_argument("--dashboard-port", type=int, default=8265)
    ap.add_argument(
        "--auth", choices=["token", "disabled"], default=os.environ.get("ENSEMBLE_RAY_AUTH", "token")
    )
    ap.add_argument("--state-dir", default=None)
    a = ap.parse_args(argv)
    try:
        return _run(a)
    except (RuntimeError, TimeoutError) as exc:  # already running, none to join, a node that died
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _run(a: argparse.Namespace) -> int:
    if a.command == "start":
        st = start(a.num_cpus or 2, a.port, a.dashboard_port, a.auth, a.num_gpus, a.state_dir)
        print(f"Ray head running (pid {st.head_pid}); dashboard/jobs API {st.dashboard_url}")
        print("export " + " ".join(f"{k}={v}" for k, v in st.env().items()))
    elif a.command == "add-worker":
        pid = add_worker(a.num_cpus or 1, a.num_gpus, a.state_dir)
        print(f"worker node started (pid {pid})")
    elif a.command == "status":
        st = load_state(state_dir(a.state_dir))
        if st is None:
            print("no local cluster recorded")
            return 1
        alive = {p: _alive(p) for p in [st.head_pid, *st.worker_pids]}
        print(json.dumps({**asdict(st), "alive": alive, "env": st.env()}, indent=2))
    else:
        n = stop(a.state_dir)
        print(f"stopped {n} node(s)" if n else "no local cluster recorded")
    return 0


if __name__ == "__main__":
    from ensemble.cli import run_main

    raise SystemExit(run_main(main))
