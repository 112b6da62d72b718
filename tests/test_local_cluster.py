"""jobs.local_cluster bookkeeping that needs no running cluster."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from jobs import local_cluster


def test_stopping_forgets_rays_record_of_our_head_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    record = tmp_path / "ray" / "ray_current_cluster"
    record.parent.mkdir()
    record.write_text("192.0.2.2:51575\n")
    local_cluster._forget_current_cluster(6379)  # another head's record: kept
    assert record.read_text() == "192.0.2.2:51575\n"
    local_cluster._forget_current_cluster(51575)  # ours: removed, so a bare ray.init() won't wait on it
    assert not record.exists()
    local_cluster._forget_current_cluster(51575)  # nothing recorded: nothing to do


def _processes() -> dict[int, tuple[int, int, int, str, str]]:
    """pid -> (parent pid, process group, session, start time, name) of every process here."""
    out: dict[int, tuple[int, int, int, str, str]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        f = stat[stat.rindex(")") + 2 :].split()  # the fields after "pid (name) "
        out[int(d.name)] = (int(f[1]), int(f[2]), int(f[3]), f[19], name)
    return out


def _family(roots: set[int]) -> dict[int, tuple[str, str]]:
    """The processes of ``roots``: their descendants and every member of their process groups and
    sessions, as pid -> (start time, name); the start time tells a pid reused later apart."""
    procs = _processes()
    found = {p: procs[p][3:] for p in roots if p in procs}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, pgrp, sid, *rest) in procs.items():
            if pid not in found and (ppid in found or pgrp in roots or sid in roots):
                found[pid] = (rest[0], rest[1])
                grew = True
    return found


def _still_running(family: dict[int, tuple[str, str]]) -> list[int]:
    procs = _processes()
    return [
        p
        for p, (start, _) in family.items()
        if p in procs and procs[p][3] == start and local_cluster._alive(p)
    ]


@pytest.mark.ray
@pytest.mark.slow
def test_stop_leaves_no_process_of_the_cluster_behind(tmp_path: Path) -> None:
    """A head and a worker node started by ``start`` / ``add_worker``: after ``stop`` none of their
    processes (``ray start``, GCS, raylets, dashboard, agents, workers) is alive."""
    from ensemble.data.pgserver import free_port

    sdir = tmp_path / "state"
    family: dict[int, tuple[str, str]] = {}
    try:
        st = local_cluster.start(
            num_cpus=1, port=free_port(), dashboard_port=free_port(), auth="disabled", sdir=sdir
        )
        worker = local_cluster.add_worker(num_cpus=1, sdir=sdir)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:  # up once both nodes run their raylet
            family = _family({st.head_pid, worker})
            if [name for _, name in family.values()].count("raylet") == 2:
                break
            time.sleep(0.5)
        family = _family({st.head_pid, worker})  # everything running now
        names = sorted(name for _, name in family.values())
        assert names.count("raylet") == 2 and "gcs_server" in names, names
        assert local_cluster.stop(sdir) == 2
        assert local_cluster.load_state(sdir) is None
        time.sleep(0.5)
        left = _still_running(family)
        assert left == [], [(p, family[p][1]) for p in left]
    finally:
        local_cluster.stop(sdir)
        for pid in _still_running(family):  # only what this test started
            os.kill(pid, signal.SIGKILL)
