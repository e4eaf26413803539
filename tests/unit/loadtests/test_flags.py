"""The request flags are declared once (loadtests/flags.py): ``optiserve loadtest`` takes each, defaulting to its
variable, and hands each to the Locust processes through that variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtests import settings
from loadtests.flags import REQUEST_FLAGS
from loadtests.runner import LoadTestConfig, _env
from modelpkg.settings import SettingError
from optiserve.cli import build_parser


def _loadtest_args(*argv: str) -> object:
    return build_parser().parse_args(["loadtest", "--host", "http://127.0.0.1:1", *argv])


def test_the_cli_takes_every_request_flag_with_its_variable_as_default(monkeypatch) -> None:
    monkeypatch.setenv(settings.INPUTS.name, "3")
    monkeypatch.setenv(settings.HEADERS.name, "X-Tenant: a\nX-Trace: b")
    monkeypatch.setenv(settings.SEED.name, "7")
    args = _loadtest_args()
    assert all(hasattr(args, flag.dest) for flag in REQUEST_FLAGS)
    assert (args.inputs, args.header, args.seed) == (3, ["X-Tenant: a", "X-Trace: b"], 7)
    help_text = build_parser()._subparsers._group_actions[0].choices["loadtest"].format_help()  # type: ignore[union-attr]
    assert all(flag.setting.name in help_text for flag in REQUEST_FLAGS)


def test_a_bad_variable_stops_the_cli_naming_it(monkeypatch) -> None:
    monkeypatch.setenv(settings.RATE.name, "fast")
    with pytest.raises(SettingError, match="OPTISERVE_RATE='fast'"):
        _loadtest_args()


def test_the_flags_reach_locust_through_their_variables(tmp_path: Path) -> None:
    payload = tmp_path / "inputs.txt"
    config = LoadTestConfig(
        host="http://127.0.0.1:1",
        out_dir=tmp_path,
        users=4,
        max_inputs=2,
        model="m",
        rate=8.0,
        seed=5,
        headers=("X-Tenant: a",),
        api_key="KEY",
        payload=payload,
    )
    env = _env(config)
    assert env[settings.INPUTS.name] == "2" and env[settings.MODEL.name] == "m"
    assert env[settings.SEED.name] == "5" and env[settings.API_KEY.name] == "KEY"
    assert env[settings.RATE_PER_USER.name] == "2.0"  # the total rate, split over the fixed users
    assert env[settings.PAYLOAD.name] == str(payload.resolve())
    explicit = LoadTestConfig(host="http://127.0.0.1:1", out_dir=tmp_path, users=4, rate=8.0, rate_per_user=0.5)
    assert _env(explicit)[settings.RATE_PER_USER.name] == "0.5"  # per user wins over the split
