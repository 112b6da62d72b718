"""jobs.local_cluster bookkeeping that needs no running cluster."""

from __future__ import annotations

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
