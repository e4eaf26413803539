"""The control plane's pure parts (serving/control.py, serving/served.py): which package set a deploy asks for, when
a replica counts as done, where `--address auto` finds a server, and the limits it refuses. No Ray here: the live
behaviour is tests/integration/test_operations.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from modelpkg.errors import OptiserveError
from serving import control
from serving.served import Slot


def test_a_deploy_replaces_models_of_the_same_name_and_adds_new_ones_in_order() -> None:
    current = [{"name": "a", "path": "/a1"}, {"name": "b", "path": "/b1"}]
    merged = control._merge(current, [{"name": "b", "path": "/b2"}, {"name": "c", "path": "/c1"}])
    assert merged == [{"name": "a", "path": "/a1"}, {"name": "b", "path": "/b2"}, {"name": "c", "path": "/c1"}]


def _model(package: str, canary: str | None = None, loading: bool = False, draining: bool = False) -> dict:
    return {
        "serving": {"package": package},
        "canary": {"package": canary} if canary else None,
        "loading": {"path": "/x"} if loading else None,
        "draining": ["old"] if draining else [],
    }


def test_a_replica_is_done_only_when_it_serves_exactly_the_expected_packages_with_nothing_in_motion() -> None:
    expected = {"m": ("p2", None)}
    assert control._settled({"m": _model("p2")}, expected)
    assert not control._settled({"m": _model("p1")}, expected)  # still the old one
    assert not control._settled({"m": _model("p2", loading=True)}, expected)
    assert not control._settled({"m": _model("p2", draining=True)}, expected)  # the old one still answers
    assert not control._settled({"m": _model("p2"), "other": _model("q")}, expected)  # a removed model lingers
    assert control._settled({"m": _model("p1", canary="p2")}, {"m": ("p1", "p2")})
    assert not control._settled({"m": _model("p1")}, {"m": ("p1", "p2")})  # the canary is not loaded yet


def test_address_auto_finds_the_one_local_server_and_forgets_dead_ones(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(control, "records_dir", lambda: tmp_path)
    with pytest.raises(OptiserveError, match="no optiserve server runs on this machine"):
        control.resolve_address("auto")
    assert control.resolve_address("10.0.0.1:6379") == "10.0.0.1:6379"  # given: used as it is
    mine = control.write_record("http://127.0.0.1:8000", "127.0.0.1:6379")
    assert mine.parent == tmp_path and json.loads(mine.read_text())["pid"] == os.getpid()
    dead = tmp_path / "999999999.json"
    dead.write_text(json.dumps({"pid": 999999999, "url": "http://x", "ray_address": "127.0.0.1:1"}))
    assert control.resolve_address("auto") == "127.0.0.1:6379"
    assert not dead.exists()  # its server is gone
    (tmp_path / "1.json").write_text(json.dumps({"pid": 1, "url": "http://127.0.0.1:9000", "ray_address": "h:2"}))
    with pytest.raises(OptiserveError, match="several optiserve servers") as several:
        control.resolve_address("auto")
    assert "--address h:2" in str(several.value) and "--address 127.0.0.1:6379" in str(several.value)


def test_canary_fractions_outside_zero_to_one_are_refused() -> None:
    with pytest.raises(OptiserveError, match=r"fraction of requests in \(0, 1\)"):
        control.CanaryLimits(fraction=1.0)
    with pytest.raises(ValueError, match="canary of 'm' takes a fraction"):
        Slot.from_config({"name": "m", "path": "/p", "canary": {"path": "/q", "fraction": 0}})
    slot = Slot.from_config({"name": "m", "path": "/p", "canary": {"path": "/q", "fraction": 0.25}})
    assert (slot.canary, slot.fraction) == ("/q", 0.25)
    assert Slot.from_config({"name": "m", "path": "/p"}).canary is None


def test_the_spec_reaches_replicas_as_user_config_with_the_control_keys() -> None:
    spec = control.DeploySpec(packages=[{"name": "m", "path": "/p"}], overrides={"max_batch_size": 8}, generation=3)
    config = spec.user_config()
    packages = [{"name": "m", "path": "/p"}]
    assert config == {"max_batch_size": 8, "packages": packages, "generation": 3, "draining": False}
    rollout = {"model": "m", "package": "abc", "outcome": "rolled_back", "reason": "agreement", "at": 1.0}
    assert control.DeploySpec(packages=[], rollout=rollout).user_config()["rollout"] == rollout
