"""The configuration contract: every key documented with its default, errors named by key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vocwatch.edges.config import ConfigError, Settings, load_settings

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def _sections() -> list[tuple[str, str]]:
    return [
        (section, key)
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize(("section", "key"), _sections())
def test_example_config_documents_every_key(section: str, key: str) -> None:
    text = EXAMPLE.read_text()
    block = text.split(f"[{section}]", 1)[1].split("\n[", 1)[0]
    assert re.search(rf"^#? ?{key} = ", block, re.MULTILINE), f"{section}.{key} missing from config.example.toml"


def test_example_config_values_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("VOCWATCH_CONFIG", "VOCWATCH_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    loaded = load_settings(EXAMPLE)
    documented = tomllib.loads(EXAMPLE.read_text())
    defaults = Settings()
    for section, keys in documented.items():
        for key in keys:
            if section == "api" and key == "api_key_file":
                continue  # the example names the systemd location; the default is none
            assert getattr(getattr(loaded, section), key) == getattr(getattr(defaults, section), key), (section, key)


@pytest.mark.parametrize(
    ("toml", "fragment"),
    [
        ("[upload]\nworkers = -1\n", "upload.workers: Input should be greater than or equal to 1"),
        ('[upload]\non_conflict = "overwrite"\n', "upload.on_conflict: Input should be 'fail' or 'upload'"),
        ('[watch]\nmode = "magic"\n', "watch.mode"),
        ('[api]\ntenant_id = "a/b"\n', "api.tenant_id"),
        ('[api]\nbase_url = "https://ops@voc.example"\n', "api.base_url: carries a user name or password"),
        ('[api]\nbase_url = "https://voc.example/?bearer_token=k"\n', "api.base_url: has a query or fragment"),
        ('[metrics]\nlisten = "everywhere"\n', "metrics.listen"),
        ("[surprise]\nx = 1\n", "surprise: unknown key"),
        ("not toml at all [", "not valid TOML"),
    ],
)
def test_bad_values_name_their_key(tmp_path: Path, toml: str, fragment: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml)
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert any(fragment in p and str(config) in p for p in caught.value.problems), caught.value.problems


def test_a_password_in_the_base_url_is_refused_without_repeating_it(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[api]\nbase_url = "https://ops:hunter2@voc.example"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(config)
    assert any("api.base_url" in p for p in caught.value.problems), caught.value.problems
    assert "hunter2" not in str(caught.value.problems)


def test_done_after_completed_without_the_poller_is_refused(tmp_path: Path) -> None:
    """Nothing would ever learn that the job completed: every pair would wait in uploaded/ forever."""
    from vocwatch.runtime.daemon import check_layout

    config = tmp_path / "c.toml"
    config.write_text(
        f'[folders]\ninbox = "{tmp_path}/in"\ndone = "{tmp_path}/done"\nfailed = "{tmp_path}/failed"\n'
        f'work = "{tmp_path}/work"\nuploaded = "{tmp_path}/up"\ndone_after = "completed"\n'
        f'[ledger]\npath = "{tmp_path}/l.sqlite3"\n[status]\npoll = false\n'
    )
    with pytest.raises(ConfigError) as caught:
        check_layout(load_settings(config))
    assert any("status.poll = true" in p for p in caught.value.problems), caught.value.problems
