"""The service's whole life under a real systemd: a booted Debian 12 container (systemd-nspawn), the built
.deb, `vocwatch setup` against the simulator, then start, deliver, stop, fail for good, upgrade, remove, purge.

Marker ``systemd``: run by ``make systemd-test`` (root), not by ``make test``. The tests are steps of one
machine's life, in file order; a machine that refuses containers fails them, it never skips them.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import rootfs
from support.nspawn import Machine, booted, until
from systemd_support import (
    PRODUCER,
    SPOOL,
    UNIT,
    Package,
    built_package,
    bumped,
    exposure,
    first_output_of_follow,
    install,
    journal,
    json_objects,
    readme_recipes,
    show,
    spawn_failure,
    stays_failed_past_restart_sec,
    wait_state,
)

from vocwatch.testing.samples import write_sidecar, write_wav
from vocwatch.testing.simulator import SimState, Simulator

pytestmark = [pytest.mark.systemd, pytest.mark.timeout(600)]

TENANT = "tenant-nspawn"
KEY = "key-" + secrets.token_urlsafe(16)
CONFIG = "/etc/vocwatch/config.toml"


@pytest.fixture(scope="module")
def sim() -> Iterator[Simulator]:
    """The simulator as a host process on loopback; the container shares the host's network."""
    simulator = Simulator(SimState(api_key=KEY, tenant=TENANT, complete_after_s=0.2, seed=3)).start()
    yield simulator
    simulator.stop()


@pytest.fixture(scope="module")
def package() -> Package:
    return built_package()


@pytest.fixture(scope="module")
def machine() -> Iterator[Machine]:
    if os.geteuid() != 0:
        pytest.fail("make systemd-test needs root: it runs debootstrap and systemd-nspawn")
    with booted(rootfs.cached_root()) as m:
        yield m


def drop_pair(m: Machine, name: str, recording_id: str, sidecar: str | None = None) -> None:
    """A producer in group vocwatch drops a recording and its sidecar: temp names, then renames, as a recorder."""
    samples = m.path(f"/srv/samples/{name}")
    samples.mkdir(parents=True)
    write_wav(samples / f"{name}.wav", 1.0)
    if sidecar is None:
        write_sidecar(samples / f"{name}.json", recording_id)
    else:
        (samples / f"{name}.json").write_text(sidecar)
    samples.chmod(0o755)
    for f in samples.iterdir():
        f.chmod(0o644)
    inbox = f"{SPOOL}/inbox"
    m.sh(
        f"cp /srv/samples/{name}/{name}.wav {inbox}/.{name}.wav.tmp && mv {inbox}/.{name}.wav.tmp {inbox}/{name}.wav"
        f" && cp /srv/samples/{name}/{name}.json {inbox}/.{name}.json.tmp"
        f" && mv {inbox}/.{name}.json.tmp {inbox}/{name}.json",
        user=PRODUCER,
    )


# -- install and configure -------------------------------------------------------------------------------------
def test_the_package_installs_a_user_a_spool_and_a_service_not_yet_started(machine: Machine, package: Package) -> None:
    install(machine, package)
    assert machine.run(["id", "-u", "vocwatch"]).stdout.strip().isdigit()
    inbox = machine.run(["stat", "-c", "%a %U:%G", f"{SPOOL}/inbox"]).stdout.split()
    assert inbox == ["2770", "vocwatch:vocwatch"]
    assert machine.run(["vocwatch", "--version"]).stdout.startswith("vocwatch ")
    state = show(machine, "ActiveState", "UnitFileState", "LoadState")
    assert state == {"ActiveState": "inactive", "UnitFileState": "disabled", "LoadState": "loaded"}, state


def test_setup_writes_a_root_only_key_and_the_tenant_then_checks_online(machine: Machine, sim: Simulator) -> None:
    result = machine.run(
        ["vocwatch", "setup", "--tenant", TENANT, "--base-url", sim.url, "--key-file", "-"], stdin=KEY + "\n"
    )
    assert KEY not in result.stdout + result.stderr
    assert "systemctl enable --now vocwatch" in result.stdout + result.stderr
    assert machine.run(["stat", "-c", "%a %U:%G", "/etc/vocwatch/api-key"]).stdout.split() == ["600", "root:root"]
    assert machine.path("/etc/vocwatch/api-key").read_text().strip() == KEY
    assert TENANT in machine.path(CONFIG).read_text() and sim.url in machine.path(CONFIG).read_text()


# -- the running service ---------------------------------------------------------------------------------------
def test_enable_now_returns_with_the_service_ready(machine: Machine) -> None:
    machine.run(["systemctl", "enable", "--now", UNIT], timeout=120)
    # Type=notify: systemctl returned only after READY=1, so the unit is running (not "activating") right now.
    state = show(machine, "ActiveState", "SubState", "Type", "StatusText", "UnitFileState")
    assert (state["ActiveState"], state["SubState"], state["Type"]) == ("active", "running", "notify"), state
    assert state["UnitFileState"] == "enabled" and state["StatusText"], state


def test_a_producers_pair_lands_in_done_with_its_job_id_in_the_ledger(machine: Machine, sim: Simulator) -> None:
    machine.run(["useradd", "--create-home", "--groups", "vocwatch", PRODUCER])
    drop_pair(machine, "call-0001", "rec-0001")
    until(lambda: machine.path(f"{SPOOL}/done/call-0001.wav").exists(), 60, "call-0001.wav in done/")
    [received] = [r for r in sim.state.received if r.metadata.get("id") == "rec-0001"]
    shown = machine.run(["vocwatch", "ledger", "show", "rec-0001", "--config", CONFIG]).stdout
    assert received.job_id in shown, shown


def test_systemctl_status_shows_the_status_line(machine: Machine) -> None:
    status = machine.run(["systemctl", "status", "--no-pager", UNIT]).stdout
    text = show(machine, "StatusText")["StatusText"]
    assert text and f'Status: "{text}"' in status, status


def test_a_provoked_warning_shows_in_journalctl_p_warning(machine: Machine) -> None:
    drop_pair(machine, "call-bad", "rec-bad", sidecar="{ not json")
    until(lambda: machine.path(f"{SPOOL}/failed/call-bad.wav").exists(), 60, "call-bad.wav in failed/")
    warnings = until(lambda: "upload.failed" in (out := journal(machine, "-p", "warning", "-o", "cat")) and out, 30,
                     "upload.failed in journalctl -p warning")  # fmt: skip
    assert "call-bad" in warnings
    assert '"level": "info"' not in warnings  # priorities are the events' own, not all "info"


def test_every_journalctl_recipe_of_the_readme_runs_and_prints_what_it_says(machine: Machine) -> None:
    recipes = readme_recipes()
    assert len(recipes) >= 3, recipes
    for command, says in recipes:
        if " -f " in f"{command} ":  # following never ends: what it prints at once (the last lines) is enough
            objects = json_objects(first_output_of_follow(machine, command))
        else:
            objects = json_objects(machine.sh(command).stdout)
        assert objects, f"{command!r} printed nothing"
        if says == "follow":
            assert all("event" in o and "level" in o for o in objects), command
        elif says == "warnings and errors":
            assert {o["level"] for o in objects} <= {"warning", "error", "critical"}, command
            assert any(o["event"] == "upload.failed" and "call-bad" in str(o) for o in objects), command
        elif says == "what landed in failed/":
            assert {o["event"] for o in objects} == {"upload.failed"}, command
            assert any("call-bad" in str(o) for o in objects), command
        else:
            pytest.fail(f"the README's recipe {command!r} says {says!r}: teach this test what that prints")


def test_the_unit_is_rated_at_most_1_5_by_systemd_analyze_security(machine: Machine) -> None:
    assert exposure(machine) <= 1.5


def test_stop_exits_0_within_the_grace(machine: Machine) -> None:
    machine.run(["systemctl", "stop", UNIT], timeout=120)
    state = show(machine, "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
    # Result=success: it exited by itself; a stop that outlasts TimeoutStopSec= ends "timeout" (SIGKILL).
    assert state == {"ActiveState": "inactive", "Result": "success", "ExecMainStatus": "0", "ExecMainCode": "1"}


# -- failing for good ------------------------------------------------------------------------------------------
def test_a_missing_key_file_stops_the_service_for_good_with_the_reason_in_the_journal(machine: Machine) -> None:
    machine.run(["mv", "/etc/vocwatch/api-key", "/root/api-key"])
    try:
        assert machine.run(["systemctl", "start", UNIT], check=False).returncode != 0
        state = wait_state(machine, "failed")
        assert state["ExecMainStatus"] == "243", state  # systemd's EXIT_CREDENTIALS: LoadCredential= failed
        stays_failed_past_restart_sec(machine)
        # systemd says it, before vocwatch runs: the README maps 243/CREDENTIALS to the key file.
        assert "status=243/CREDENTIALS" in journal(machine, "-o", "cat", "-n", "20")
        assert "Failed to set up credentials" in spawn_failure(machine)
    finally:
        machine.run(["mv", "/root/api-key", "/etc/vocwatch/api-key"])
        machine.run(["systemctl", "reset-failed", UNIT])


def test_a_bad_config_stops_the_service_for_good_with_the_reason_in_the_journal(machine: Machine) -> None:
    config = machine.path(CONFIG)
    good = config.read_text()
    config.write_text(good.replace("workers = 4", "workers = 0"))
    try:
        assert machine.run(["systemctl", "start", UNIT], check=False).returncode != 0
        state = wait_state(machine, "failed")
        assert state["ExecMainStatus"] == "78", state  # EX_CONFIG
        stays_failed_past_restart_sec(machine)
        lines = journal(machine, "-o", "cat", "-p", "err", "SYSLOG_IDENTIFIER=vocwatch")
        [problem] = [o for o in json_objects(lines) if o["event"] == "config.invalid"]
        assert "upload.workers" in problem["message"] and CONFIG in problem["message"], problem
    finally:
        config.write_text(good)
        machine.run(["systemctl", "reset-failed", UNIT])


# -- upgrade, remove, purge ------------------------------------------------------------------------------------
def test_an_upgrade_keeps_the_config_and_the_ledger_and_restarts_the_running_service(
    machine: Machine, package: Package, tmp_path: Path
) -> None:
    config = machine.path(CONFIG)
    edited = config.read_text().replace("workers = 4", "workers = 3  # the operator's edit")
    config.write_text(edited)
    machine.run(["systemctl", "start", UNIT], timeout=120)
    before = show(machine, "MainPID")["MainPID"]
    newer = bumped(package, tmp_path)
    install(machine, newer)
    after = wait_state(machine, "active")
    assert after["MainPID"] not in ("0", before), (before, after)
    assert config.read_text() == edited  # a conffile: the operator's edit survives
    assert machine.run(["dpkg-query", "-W", "-f", "${Version}", "vocwatch"]).stdout == newer.version
    assert "rec-0001" in machine.run(["vocwatch", "ledger", "show", "rec-0001", "--config", CONFIG]).stdout


def test_remove_keeps_the_spool_the_ledger_and_the_config(machine: Machine) -> None:
    machine.run(["apt-get", "remove", "-y", "vocwatch"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    for kept in (f"{SPOOL}/done/call-0001.wav", f"{SPOOL}/failed/call-bad.wav", "/var/lib/vocwatch/ledger.sqlite3",
                 CONFIG, "/etc/vocwatch/api-key"):  # fmt: skip
        assert machine.path(kept).exists(), kept
    assert show(machine, "ActiveState")["ActiveState"] in ("inactive", "failed")


def test_purge_never_deletes_recordings(machine: Machine) -> None:
    result = machine.run(["apt-get", "purge", "-y", "vocwatch"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    for kept in (f"{SPOOL}/done/call-0001.wav", f"{SPOOL}/failed/call-bad.wav"):
        assert machine.path(kept).exists(), kept
    assert SPOOL in result.stdout + result.stderr  # purge says what it leaves behind


def test_a_purge_of_an_install_that_never_held_a_recording_leaves_only_the_user(
    machine: Machine, package: Package
) -> None:
    for leftover in (SPOOL, "/var/lib/vocwatch"):
        machine.run(["rm", "-rf", leftover])
    install(machine, package)
    # A vocwatch setup killed (SIGKILL, a power cut) between writing its temp key and the rename leaves this.
    machine.run(["install", "-m", "0600", "/dev/null", "/etc/vocwatch/api-key.vocwatch-setup.k1ll3d"])
    result = machine.run(["apt-get", "purge", "-y", "vocwatch"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300)
    said = result.stdout + result.stderr
    assert "kept the system user and group vocwatch" in said and f"kept {SPOOL}" not in said, said
    for gone in ("/etc/vocwatch", SPOOL, "/var/lib/vocwatch", "/opt/venvs/vocwatch", "/usr/bin/vocwatch"):
        assert not os.path.lexists(machine.path(gone)), gone
    assert machine.run(["getent", "passwd", "vocwatch"]).stdout.startswith("vocwatch:")


def test_a_purge_with_the_spool_on_a_file_system_of_its_own_succeeds_and_leaves_the_mount_point(
    machine: Machine, package: Package
) -> None:
    # An operator gave the spool its own disk. find -delete used to try the mount point too: EBUSY, and
    # set -e failed the purge (the package stuck half-removed).
    install(machine, package)
    machine.run(["mount", "-t", "tmpfs", "-o", "mode=0750", "vocwatch-spool", SPOOL])
    try:
        machine.run(["systemd-tmpfiles", "--create", "vocwatch.conf"])  # the package's folders, on the new disk
        machine.run(["mkdir", f"{SPOOL}/lost+found"])  # what mkfs.ext4 leaves on a new file system
        result = machine.run(
            ["apt-get", "purge", "-y", "vocwatch"], env={"DEBIAN_FRONTEND": "noninteractive"}, timeout=300, check=False
        )
        said = result.stdout + result.stderr
        assert result.returncode == 0, said
        assert f"kept {SPOOL} (no recording in it" in said, said
        assert machine.run(["find", SPOOL]).stdout.split() == [SPOOL, f"{SPOOL}/lost+found"]
        assert machine.run(["test", "-e", "/var/lib/vocwatch"], check=False).returncode == 1
        status = machine.run(["dpkg-query", "-W", "-f", "${db:Status-Status}", "vocwatch"], check=False).stdout
        assert status in ("", "not-installed"), status
    finally:
        machine.run(["umount", SPOOL], check=False)
