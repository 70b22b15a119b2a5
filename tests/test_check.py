"""``vocwatch check``: one line per check, exit 0 only when all pass, and never the key in its output."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from secrets import token_hex
from typing import Any

import pytest
from conftest import TENANT, Spool, drop, running, wait_for

from vocwatch.edges import watcher
from vocwatch.testing.simulator import SimState, Simulator

Results = dict[str, tuple[str, str]]


def check(*args: str, secrets: tuple[str, ...]) -> tuple[int, Results]:
    """Run ``vocwatch check`` as an operator would (its own process); its lines by name, as (ok or FAIL, detail)."""
    done = subprocess.run(
        [sys.executable, "-m", "vocwatch", "check", *args], capture_output=True, text=True, timeout=60
    )
    for secret in secrets:
        assert secret not in done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(line[:4].strip() in ("ok", "FAIL") for line in lines), done.stdout + done.stderr
    return done.returncode, {line[6:24].strip(): (line[:4].strip(), line[25:]) for line in lines}


@pytest.fixture
def config(spool: Spool, make_settings: Callable[..., Any], tmp_path: Path) -> Callable[..., str]:
    """A config for this test's spool with every folder in place; returns its path."""

    def make(**overrides: Any) -> str:
        for folder in (spool.done, spool.failed, spool.ledger_path.parent):
            folder.mkdir(parents=True, exist_ok=True)
        make_settings(**overrides)
        return str(tmp_path / "config.toml")

    return make


def test_good_config_passes_every_check(config: Any, api_key: str) -> None:
    path = config()
    code, results = check("--config", path, secrets=(api_key,))
    assert code == 0
    assert {name: status for name, (status, _) in results.items()} == {
        "config": "ok",
        "folders.inbox": "ok",
        "folders.done": "ok",
        "folders.failed": "ok",
        "same filesystem": "ok",
        "held-open files": "ok",
        "ledger": "ok",
        "done_action": "ok",
        "done_retention": "ok",
        "done_layout": "ok",
        "upload.bandwidth": "ok",
        "upload.window": "ok",
        "upload.order": "ok",
        "ledger.keep_days": "ok",
        "watch.mode": "ok",
        "api key": "ok",
    }
    assert results["config"][1] == path
    assert results["held-open files"][1].startswith("open/close events: yes (inotify); read lease: ")
    assert "will be created at first start" in results["ledger"][1]
    assert "VOCWATCH_API_KEY" in results["api key"][1]


def test_check_says_which_means_tell_a_file_is_held_open(config: Any, api_key: str) -> None:
    # Informational, never a failure: a polling inbox sees no opens and closes (pairing.py, rule 3).
    code, results = check("--config", config(watch__mode="poll"), secrets=(api_key,))
    assert code == 0
    status, detail = results["held-open files"]
    assert status == "ok" and detail.startswith("open/close events: no (polling); read lease: ")


def test_with_neither_events_nor_leases_the_check_says_only_settle_protects(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watcher, "lease_reach", lambda _: "none")
    _, line = watcher.held_open_means(tmp_path, events=False)
    assert line.startswith("open/close events: no (polling); read lease: no (")
    assert "only watch.settle_seconds protects" in line


def test_missing_folder_fails_with_a_hint(config: Any, spool: Spool, api_key: str) -> None:
    path = config()
    spool.done.rmdir()
    code, results = check("--config", path, secrets=(api_key,))
    assert code == 1
    status, detail = results["folders.done"]
    assert status == "FAIL" and f"{spool.done} does not exist" in detail and "install -d" in detail
    assert [name for name, (s, _) in results.items() if s == "FAIL"] == ["folders.done"]


def test_ledger_that_is_no_database_fails(config: Any, spool: Spool, api_key: str) -> None:
    path = config()
    spool.ledger_path.write_bytes(b"not a database, just bytes " * 100)
    code, results = check("--config", path, secrets=(api_key,))
    assert code == 1
    status, detail = results["ledger"]
    assert status == "FAIL" and "restore it from a backup" in detail


def test_missing_key_fails_and_names_where_it_looked(config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    path = config()
    monkeypatch.delenv("VOCWATCH_API_KEY")
    code, results = check("--config", path, "--online", secrets=())
    assert code == 1
    assert results["api key"][0] == "FAIL" and "missing: put it in one of VOCWATCH_API_KEY" in results["api key"][1]
    assert results["api key accepted"] == ("FAIL", "no key to try")


def test_online_with_the_right_key(config: Any, api_key: str) -> None:
    code, results = check("--config", config(), "--online", secrets=(api_key,))
    assert code == 0
    assert results["api health"][0] == "ok"
    assert results["api key accepted"] == ("ok", "key accepted for tenant tenant-test")


def test_online_with_a_wrong_key_fails_without_printing_either_key(
    config: Any, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config()
    wrong = "wrong-" + api_key[::-1]
    monkeypatch.setenv("VOCWATCH_API_KEY", wrong)
    code, results = check("--config", path, "--online", secrets=(api_key, wrong))
    assert code == 1
    assert results["api health"][0] == "ok"  # the API is up: it is the key that is refused
    status, detail = results["api key accepted"]
    assert status == "FAIL" and detail.startswith("refused: HTTP 401") and "fix the key" in detail


def test_online_with_a_wrong_tenant_fails(config: Any, api_key: str) -> None:
    # A status query would answer 404 for a wrong tenant and for an unknown job alike; the probe must not.
    code, results = check("--config", config(api__tenant_id="tenant-nobody"), "--online", secrets=(api_key,))
    assert code == 1
    status, detail = results["api key accepted"]
    assert status == "FAIL" and "HTTP 404" in detail and "api.tenant_id" in detail


def test_key_from_systemd_credential_is_found_and_accepted(
    config: Any, api_key: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = config()
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "api-key").write_text(api_key + "\n")
    monkeypatch.delenv("VOCWATCH_API_KEY")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    code, results = check("--config", path, "--online", secrets=(api_key,))
    assert code == 0, results
    assert "$CREDENTIALS_DIRECTORY/api-key" in results["api key"][1]
    assert results["api key accepted"][0] == "ok"


@pytest.mark.parametrize(
    ("layout", "why"),
    [("{0}\n{1}", "line break"), ("{0}\t{1}", "tab")],
    ids=["second_line", "tab"],
)
def test_online_with_a_key_that_cannot_be_a_header_fails_without_printing_any_part_of_it(
    config: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str, why: str
) -> None:
    first, second = "kfirst" + token_hex(8), "ksecond" + token_hex(8)
    key = layout.format(first, second)
    # The API would even take it: the daemon refuses such a key, so `check` must not say it works.
    simulator = Simulator(SimState(api_key=key, tenant=TENANT)).start()
    try:
        key_file = tmp_path / "api-key"
        key_file.write_text(key + "\n")
        monkeypatch.delenv("VOCWATCH_API_KEY")
        path = config(api__base_url=simulator.url, api__api_key_file=key_file)
        code, results = check("--config", path, "--online", secrets=(key, first, second, first[1:], second[1:]))
    finally:
        simulator.stop()
    assert code == 1, why
    for name in ("api key", "api key accepted"):
        status, detail = results[name]
        assert status == "FAIL" and "alone on one line" in detail, (name, detail)
    assert results["api health"][0] == "ok"
    assert simulator.state.received == []


def test_check_shows_what_each_months_key_comes_to(config: Any, api_key: str) -> None:
    path = config(
        folders__done_action="delete",
        folders__done_retention_days=30,
        folders__done_layout="{accepted:%Y/%m/%d}",
        upload__bandwidth="08:00,2M 18:00,20M 23:00,off",
        upload__window="20:00-06:00",
        upload__order="arrival",
        ledger__keep_days=90,
    )
    code, results = check("--config", path, secrets=(api_key,))
    assert code == 0, results
    assert "deleted once accepted" in results["done_action"][1]
    assert "older than 30 days" in results["done_retention"][1]
    assert "{accepted:%Y/%m/%d}" in results["done_layout"][1]
    assert results["upload.bandwidth"][1].startswith("08:00,2M 18:00,20M 23:00,off (local time); now ")
    assert results["upload.window"][1].startswith("20:00-06:00 local time (")
    assert results["upload.order"][1] == "in order of arrival"
    assert "older than 90 days" in results["ledger.keep_days"][1]
    assert results["watch.mode"][1].startswith("auto -> ")


def test_a_bad_months_key_exits_78_naming_it(config: Any, api_key: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[upload]\nbandwidth = "20 MB"\n')
    done = subprocess.run(
        [sys.executable, "-m", "vocwatch", "check", "--config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 78
    # Off a terminal, one JSON line per bad key (config.invalid).
    [problem] = [json.loads(line) for line in done.stderr.splitlines()]
    assert problem["event"] == "config.invalid"
    assert 'upload.bandwidth: "20 MB" is not a rate; write 20M' in problem["message"]


def test_a_key_file_that_is_not_utf8_is_a_key_that_cannot_be_sent_not_a_crash(
    config: Any, spool: Spool, make_settings: Callable[..., Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Say, a key saved as UTF-16 by a Windows editor: the daemon crashed (exit 1) before this, so systemd
    # restarted it every 5 s forever; now it is the same refusal as a key with a space (no restart can fix it).
    key_file = tmp_path / "api-key"
    key_file.write_bytes("sim-key".encode("utf-16"))
    monkeypatch.delenv("VOCWATCH_API_KEY")
    code, results = check("--config", config(api__api_key_file=key_file), "--online", secrets=())
    assert code == 1
    for name in ("api key", "api key accepted"):
        status, detail = results[name]
        assert status == "FAIL" and "alone on one line" in detail, (name, detail)
    settings = make_settings(api__api_key_file=key_file)
    with running(settings) as daemon:  # it starts, and pauses uploads on the key instead of dying
        drop(spool.inbox, "call-1.wav")
        wait_for(lambda: daemon.parts.gate.state().auth_paused, what="uploads paused on the key")
