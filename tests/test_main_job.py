"""The main job end to end (``make run``: ``python -m jobs.pipeline --config cluster/quick.yaml``) on a
small synthetic market, as a user runs it: a separate process that generates and loads the market,
trains the six models on its own Ray, scores, serves, backtests, and keeps serving until it gets
Ctrl-C (SIGINT), which must stop everything it started and exit 0."""

from __future__ import annotations

import math
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ensemble.data.pgserver import free_port

pytestmark = [pytest.mark.slow, pytest.mark.ray, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[1]
SERVING = re.compile(r"^serving (http://\S+) \(version (\S+)\)")


class Lines:
    """The process's output, line by line, read by a thread (so that waits can time out)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.q: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.q.put(line.rstrip("\n"))
        self.q.put(None)

    def until(self, pattern: re.Pattern[str] | str, timeout: float) -> re.Match[str]:
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.q.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"the job ended before {rx.pattern!r}:\n" + "\n".join(self.seen[-60:]))
            self.seen.append(line)
            m = rx.search(line)
            if m:
                return m
        raise AssertionError(f"no {rx.pattern!r} within {timeout:.0f} s:\n" + "\n".join(self.seen[-60:]))


def test_make_run_serves_backtests_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port = free_port()
    argv = [
        sys.executable, "-m", "jobs.pipeline", "--config", "cluster/quick.yaml",
        "--tickers", "40", "--days", "520", "--port", str(port), "--top", "3",
        "--out", str(tmp_path / "run"),
        "--set", f"registry_root={tmp_path / 'registry'}",
        "--set", f"scoring.out_dir={tmp_path / 'scores'}",
        "--set", f"backtest.out_dir={tmp_path / 'backtest'}",
        "--set", "monitoring.log=false",
    ]  # fmt: skip
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("ENSEMBLE_API_KEY", None)
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    out = Lines(proc)
    try:
        out.until(r"^== train stage ==", 300)
        out.until(r"^== score stage ==", 900)
        m = out.until(SERVING, 600)
        url, version = m.group(1), m.group(2)
        assert url == f"http://127.0.0.1:{port}"
        key = out.until(r"^admin key for this session \(X-API-Key\): (\S+)$", 30).group(1)
        with httpx.Client(base_url=url, timeout=300) as c:
            health = c.get("/api/health").json()
            assert health["healthy"] and health["version"] == version, health
            recs = c.get("/api/recommendations", params={"top": 3}).json()
            assert recs["version"] == version and len(recs["recommendations"]) == 3, recs
            ticker = recs["recommendations"][0]["ticker"]
            r = c.post("/api/predict", json={"ticker": ticker})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["version"] == version and body["forecast"]["ticker"] == ticker, body
            got = {h: f["ensemble"] for h, f in body["forecast"]["horizons"].items()}
            assert sorted(got, key=int) == ["5", "20", "60"], body
            assert all(isinstance(v, float) and math.isfinite(v) for v in got.values()), body
            # the admin routes answer to the session's key only (an A/B split of weight 0: no change)
            assert c.put("/api/ab", json={"weight": 0.0}).status_code == 401
            assert c.put("/api/ab", json={"weight": 0.0}, headers={"X-API-Key": key}).status_code == 200
        out.until(r"^== backtest stage ==", 60)
        report = out.until(r"^report: (\S+)$", 900).group(1)
        assert Path(report).is_file()
        out.until(r"^serving http://\S+ until Ctrl-C", 60)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0, "\n".join(out.seen[-40:])
        with pytest.raises(httpx.HTTPError):  # the service stopped with the job
            httpx.get(f"{url}/api/health", timeout=5)
    finally:
        if proc.poll() is None:  # stop what this test started, by its process id
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
