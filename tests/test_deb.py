"""The built Debian package ($VOCWATCH_DEB, from make deb): its files, conffiles, maintainer scripts, and its vocwatch.

Run by ``make deb-test`` (marker ``deb``), which builds the package first; not part of ``make test``.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from vocwatch import __version__
from vocwatch.cli.main import COMMANDS

pytestmark = pytest.mark.deb
ROOT = Path(__file__).resolve().parent.parent
VENV = "/opt/venvs/vocwatch"


@pytest.fixture(scope="module")
def deb() -> Path:
    path = os.environ.get("VOCWATCH_DEB")
    assert path, "VOCWATCH_DEB is not set: run make deb-test (it builds the package and names it)"
    assert Path(path).is_file(), f"{path} does not exist: run make deb"
    return Path(path)


@pytest.fixture(scope="module")
def tree(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb-tree")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(out)], check=True, timeout=120)
    return out


@pytest.fixture(scope="module")
def control(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("deb-control")
    subprocess.run(["dpkg-deb", "-e", str(deb), str(out)], check=True, timeout=60)
    return out


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True).stdout.strip()


def test_name_version_and_dependencies(deb: Path) -> None:
    version = field(deb, "Version")
    assert re.fullmatch(re.escape(__version__) + r"-\S+", version), version
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()
    assert deb.name == f"vocwatch_{version}_{arch}.deb" and field(deb, "Architecture") == arch
    depends = field(deb, "Depends")
    # The venv's python is a symlink to /usr/bin/python3 and its packages are built for 3.11.
    assert "python3 (>= 3.11~)" in depends and "python3 (<< 3.12~)" in depends and "systemd (>= 247)" in depends


def test_files_the_service_needs_and_nothing_of_a_checkout(deb: Path) -> None:
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True).stdout
    paths = {line.split()[5].removeprefix(".") for line in listing.splitlines()}
    for wanted in (
        "/etc/vocwatch/config.toml",
        "/lib/systemd/system/vocwatch.service",
        "/usr/lib/sysusers.d/vocwatch.conf",
        "/usr/lib/tmpfiles.d/vocwatch.conf",
        "/usr/bin/vocwatch",
        f"{VENV}/bin/vocwatch",
        f"{VENV}/bin/python3",
        "/usr/share/man/man1/vocwatch.1.gz",
        "/usr/share/bash-completion/completions/vocwatch",
        "/usr/share/zsh/vendor-completions/_vocwatch",
        "/usr/share/doc/vocwatch/copyright",
    ):
        assert wanted in paths, wanted
    assert "/usr/bin/vocwatch -> /opt/venvs/vocwatch/bin/vocwatch" in listing
    unwanted_parts = ("/.git", "/.venv", "packages/tests/", "packages/bench/", "packages/pip/", "packages/setuptools/")
    for unwanted in (*unwanted_parts, "api-key"):
        assert not [p for p in paths if unwanted in p], unwanted
    assert not [p for p in paths if p.endswith(".pyc") and "/__pycache__/" not in p]


def test_the_shipped_files_are_the_repository_s(tree: Path) -> None:
    deploy = ROOT / "deploy" / "systemd"
    assert (tree / "lib/systemd/system/vocwatch.service").read_text() == (deploy / "vocwatch.service").read_text()
    assert (tree / "usr/lib/sysusers.d/vocwatch.conf").read_text() == (deploy / "vocwatch.sysusers.conf").read_text()
    assert (tree / "usr/lib/tmpfiles.d/vocwatch.conf").read_text() == (deploy / "vocwatch.tmpfiles.conf").read_text()
    assert (tree / "etc/vocwatch/config.toml").read_text() == (deploy / "config.toml").read_text()


def test_only_the_config_is_a_conffile(control: Path) -> None:
    assert (control / "conffiles").read_text().split() == ["/etc/vocwatch/config.toml"]


def test_maintainer_scripts_make_the_user_then_the_spool_and_never_start_the_service(control: Path) -> None:
    for script in ("postinst", "prerm", "postrm"):
        subprocess.run(["sh", "-n", str(control / script)], check=True)
    postinst = (control / "postinst").read_text()
    sysusers, tmpfiles = postinst.index("systemd-sysusers"), postinst.index("systemd-tmpfiles")
    assert sysusers < tmpfiles < postinst.index("chown root:vocwatch")  # the group exists before it is used
    assert "deb-systemd-invoke try-restart 'vocwatch.service'" in postinst  # upgrade: only if it was running
    assert "deb-systemd-invoke start" not in postinst and "deb-systemd-invoke restart" not in postinst
    # Enabled only if the administrator had enabled it before (deb-systemd-helper's was-enabled).
    enables = [line.strip() for line in postinst.splitlines() if "deb-systemd-helper enable" in line]
    assert enables == ["deb-systemd-helper enable 'vocwatch.service' >/dev/null || true"]
    assert "was-enabled" in postinst
    postrm = (control / "postrm").read_text()
    # Empty folders only, on the spool's own file system, never the mount point itself (its life: test_systemd).
    assert 'find "$SPOOL" -xdev -mindepth 1 -depth -type d -empty ! -name lost+found -delete' in postrm
    assert 'rm -rf "$SPOOL"' not in postrm


def test_the_packaged_vocwatch_runs_from_its_venv(tree: Path) -> None:
    python = tree / VENV.lstrip("/") / "bin" / "python"
    # -I: nothing from this checkout or the environment; the venv alone must carry every dependency.
    done = subprocess.run(
        [str(python), "-I", "-m", "vocwatch", "--help"], capture_output=True, text=True, timeout=60, cwd="/"
    )
    assert done.returncode == 0, done.stderr
    for command in COMMANDS:
        assert command in done.stdout, command
    imported = subprocess.run(
        [str(python), "-I", "-c", "import vocwatch, tomlkit, psycopg, pydantic_core; print(vocwatch.__file__)"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().startswith(str(tree / VENV.lstrip("/")))
    # Bytecode names where it runs (compiled for /opt/venvs/vocwatch), so tracebacks show their source.
    main_pyc = next((tree / VENV.lstrip("/")).glob("lib/python3.11/site-packages/vocwatch/cli/__pycache__/main.*.pyc"))
    assert f"{VENV}/lib/python3.11/site-packages/vocwatch/cli/main.py".encode() in main_pyc.read_bytes()
    assert b"/build/deb/" not in (tree / VENV.lstrip("/") / "pyvenv.cfg").read_bytes()


def test_lintian_finds_no_error_or_warning(deb: Path) -> None:
    # debian/vocwatch.lintian-overrides says why each venv-layout tag is overridden; anything else fails here.
    done = subprocess.run(
        ["lintian", "--fail-on", "error,warning", "--pedantic", "--info", str(deb)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    hints = [line for line in done.stdout.splitlines() if line[:2] in ("E:", "W:", "I:", "P:")]
    assert done.returncode == 0 and hints == [], "\n".join(hints) or done.stderr
