"""``vocwatch setup`` as an operator runs it: the package's own config, a real simulator, the key on stdin or a tty."""

from __future__ import annotations

import io
import os
import pty
import select
import socket
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import TENANT

from vocwatch.cli.main import main
from vocwatch.testing.simulator import Simulator

PACKAGED = Path(__file__).resolve().parent.parent / "deploy" / "systemd" / "config.toml"


def site(tmp_path: Path) -> tuple[Path, Path]:
    """The packaged config.toml with its spool and ledger moved under tmp_path (mode 0640 as the package makes it)."""
    text = PACKAGED.read_text().replace("/var/spool/vocwatch", str(tmp_path / "spool"))
    text = text.replace("/var/lib/vocwatch", str(tmp_path / "lib"))
    for folder in ("spool/inbox", "spool/done", "spool/failed", "lib"):
        (tmp_path / folder).mkdir(parents=True)
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "config.toml"
    config.write_text(text)
    config.chmod(0o640)
    return config, etc / "api-key"


def setup(config: Path, key_path: Path, *args: str, stdin: str = "", **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vocwatch", "setup", "--config", str(config), "--key-path", str(key_path), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,  # type: ignore[call-overload]
    )


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_setup_writes_a_root_only_key_and_the_tenant_keeping_every_comment(
    tmp_path: Path, sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, key_path = site(tmp_path)
    before = config.read_text()
    monkeypatch.delenv("VOCWATCH_API_KEY")  # the key comes from stdin only
    done = setup(config, key_path, "--tenant", TENANT, "--base-url", sim.url, "--key-file", "-", stdin=api_key + "\n")
    assert done.returncode == 0, done.stdout + done.stderr
    assert api_key not in done.stdout + done.stderr
    assert "ok  api key accepted   key accepted for tenant tenant-test" in done.stdout
    assert done.stdout.rstrip().endswith("The one command left:\n    systemctl enable --now vocwatch")
    st = key_path.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (0, 0)
    assert key_path.read_text() == api_key + "\n"
    after = config.read_text()
    # Every comment line of the packaged file is still there, in order; only the two keys changed.
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert [line for line in after.splitlines() if line.lstrip().startswith("#")] == comments and comments
    old, new = tomllib.loads(before), tomllib.loads(after)
    assert new["api"] == {**old["api"], "tenant_id": TENANT, "base_url": sim.url}
    assert {k: v for k, v in new.items() if k != "api"} == {k: v for k, v in old.items() if k != "api"}
    assert stat.S_IMODE(config.stat().st_mode) == 0o640  # the package's mode survives the rewrite
    assert sorted(p.name for p in config.parent.iterdir()) == ["api-key", "config.toml"]  # no temp file left


def test_a_wrong_key_fails_with_77_and_names_neither_key(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    # The right key is in VOCWATCH_API_KEY: setup must try the key it wrote (as the unit will), not that one.
    config, key_path = site(tmp_path)
    wrong = "wrong-" + api_key[::-1]
    done = setup(config, key_path, "--tenant", TENANT, "--base-url", sim.url, "--key-file", "-", stdin=wrong)
    assert done.returncode == 77, done.stdout + done.stderr
    assert wrong not in done.stdout + done.stderr and api_key not in done.stdout + done.stderr
    assert "FAIL  api key accepted   refused: HTTP 401" in done.stdout
    assert "the API refused the key for tenant tenant-test" in done.stderr and "run vocwatch setup again" in done.stderr


def test_an_api_that_does_not_answer_fails_with_69(tmp_path: Path, api_key: str) -> None:
    config, key_path = site(tmp_path)
    (tmp_path / "key").write_text(api_key + "\n")
    url = f"http://127.0.0.1:{closed_port()}"
    done = setup(config, key_path, "--tenant", TENANT, "--base-url", url, "--key-file", str(tmp_path / "key"))
    assert done.returncode == 69, done.stdout + done.stderr
    assert "FAIL  api health" in done.stdout and "the API did not answer" in done.stderr
    assert api_key not in done.stdout + done.stderr


def test_a_base_url_that_is_not_the_api_is_not_called_a_refused_key(
    tmp_path: Path, sim: Simulator, api_key: str
) -> None:
    # A path too many: /health answers 404 as well as the key probe; the key was never the problem.
    config, key_path = site(tmp_path)
    url = sim.url + "/v2"
    done = setup(config, key_path, "--tenant", TENANT, "--base-url", url, "--key-file", "-", stdin=api_key)
    assert done.returncode == 69, done.stdout + done.stderr
    assert "FAIL  api health" in done.stdout and "check api.base_url (--base-url)" in done.stderr, done.stderr
    assert "refused the key" not in done.stderr


def test_a_config_that_is_a_symlink_is_edited_where_it_points(tmp_path: Path, sim: Simulator, api_key: str) -> None:
    # /etc/vocwatch/config.toml kept by configuration management elsewhere: the link must stay a link.
    config, key_path = site(tmp_path)
    managed = tmp_path / "managed.toml"
    config.rename(managed)
    config.symlink_to(managed)
    done = setup(config, key_path, "--tenant", TENANT, "--base-url", sim.url, "--key-file", "-", stdin=api_key)
    assert done.returncode == 0, done.stdout + done.stderr
    assert config.is_symlink() and config.resolve() == managed
    assert tomllib.loads(managed.read_text())["api"]["tenant_id"] == TENANT
    assert stat.S_IMODE(managed.stat().st_mode) == 0o640


@pytest.mark.parametrize(
    ("args", "stdin", "status", "message"),
    [
        (["--tenant", TENANT, "--key-file", "-"], "two words", 65, "contains spaces, line breaks"),
        (["--tenant", TENANT, "--key-file", "-"], "\n", 65, "the API key given is empty"),
        (["--tenant", TENANT, "--key-file", "/nonexistent/key"], "", 66, "cannot read the key file /nonexistent/key"),
        (["--key-file", "-"], "some-key", 64, "no tenant: give --tenant ID"),
        (["--tenant", TENANT], "", 64, "no key: give --key-file PATH"),
        (["--tenant", TENANT, "--base-url", "ftp:nowhere", "--key-file", "-"], "some-key", 78, "api.base_url"),
        (
            ["--tenant", TENANT, "--base-url", "https://ops:some-key@voc.example", "--key-file", "-"],
            "some-key",
            78,
            "api.base_url: carries a user name or password",
        ),
        (["--tenant", "acme corp", "--key-file", "-"], "some-key", 64, "tenant id 'acme corp': only letters"),
    ],
    ids=[
        "key_with_a_space",
        "empty_key",
        "missing_key_file",
        "no_tenant",
        "no_key",
        "bad_base_url",
        "password_in_base_url",
        "bad_tenant",
    ],
)
def test_bad_input_changes_nothing(
    tmp_path: Path, args: list[str], stdin: str, status: int, message: str, api_key: str
) -> None:
    config, key_path = site(tmp_path)
    before = config.read_bytes()
    done = setup(config, key_path, *args, stdin=stdin)
    assert done.returncode == status, done.stdout + done.stderr
    assert message in done.stderr and done.stderr.startswith("vocwatch setup: ")
    assert "two words" not in done.stdout + done.stderr and "some-key" not in done.stdout + done.stderr
    assert config.read_bytes() == before and not key_path.exists()
    assert sorted(p.name for p in config.parent.iterdir()) == ["config.toml"]


def test_a_key_file_that_is_not_utf8_is_refused_with_65_and_changes_nothing(tmp_path: Path) -> None:
    config, key_path = site(tmp_path)
    before = config.read_bytes()
    key_file = tmp_path / "key-utf16"
    key_file.write_bytes("some-key".encode("utf-16"))  # what a Windows editor saves
    done = setup(config, key_path, "--tenant", TENANT, "--key-file", str(key_file))
    assert done.returncode == 65, done.stdout + done.stderr
    assert done.stderr.startswith("vocwatch setup: ") and "alone on one line" in done.stderr, done.stderr
    assert config.read_bytes() == before and not key_path.exists()


def test_a_folder_where_the_key_goes_is_a_clear_error_and_no_key_is_left_beside_it(
    tmp_path: Path, api_key: str
) -> None:
    # os.replace onto a folder raised IsADirectoryError: a traceback, exit 1.
    config, key_path = site(tmp_path)
    key_path.mkdir()
    done = setup(config, key_path, "--tenant", TENANT, "--key-file", "-", stdin=api_key)
    assert done.returncode == os.EX_CANTCREAT, done.stdout + done.stderr
    assert done.stderr.startswith("vocwatch setup: cannot replace ") and "Traceback" not in done.stderr, done.stderr
    assert api_key not in done.stdout + done.stderr
    assert [p.name for p in key_path.parent.iterdir() if "vocwatch-setup" in p.name] == []  # no stray copy


def test_not_root_with_the_package_paths_exits_77(
    tmp_path: Path, api_key: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # In-process with geteuid() saying "not root": CI runs as root, and its interpreter (under /root) cannot be
    # executed by another user, so a real drop to nobody is not possible there.
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(sys, "stdin", io.StringIO(api_key))
    # No --config/--key-path: the package's paths, which only root may write.
    assert main(["setup", "--tenant", TENANT, "--key-file", "-"]) == 77
    # One path named is not enough: the other one is still the package's.
    config, _ = site(tmp_path)
    assert main(["setup", "--config", str(config), "--tenant", TENANT, "--key-file", "-"]) == 77
    out = capsys.readouterr()
    assert out.err.count("run it as root (sudo vocwatch setup)") == 2 and "--key-path PATH" in out.err
    assert api_key not in out.out + out.err and out.out == ""


def test_interactive_setup_asks_and_never_echoes_the_key(
    tmp_path: Path, sim: Simulator, api_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, key_path = site(tmp_path)
    monkeypatch.delenv("VOCWATCH_API_KEY")
    argv = [sys.executable, "-m", "vocwatch", "setup", "--config", str(config), "--key-path", str(key_path)]
    argv += ["--base-url", sim.url]
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own, as an operator's ssh session
        os.execv(sys.executable, argv)
    try:
        seen = expect(fd, b"Crescendo tenant id [tenant-alpha]: ")
        os.write(fd, TENANT.encode() + b"\n")
        seen += expect(fd, b"Crescendo API key (not shown): ")
        os.write(fd, api_key.encode() + b"\n")
        seen += expect(fd, b"systemctl enable --now vocwatch")
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, seen.decode(errors="replace")
    assert api_key.encode() not in seen  # the terminal never showed it: getpass turned echo off
    assert key_path.read_text() == api_key + "\n"
    assert tomllib.loads(config.read_text())["api"]["tenant_id"] == TENANT


def expect(fd: int, wanted: bytes, timeout: float = 30.0) -> bytes:
    """Read the terminal until ``wanted`` has appeared (what was read), or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    seen = b""
    while wanted not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for {wanted!r}; the terminal showed {seen!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            assert chunk, f"the terminal closed before {wanted!r}; it showed {seen!r}"
            seen += chunk
    return seen
