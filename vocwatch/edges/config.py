"""Settings: a TOML file plus ``VOCWATCH_<SECTION>__<KEY>`` environment overrides.

The key names are a public contract (operators' configs depend on them): add keys, never rename.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from vocwatch.core import schedule

EX_CONFIG = os.EX_CONFIG  # 78: a bad configuration

# The TOML file of the load_settings call in progress (in this thread), for Settings' sources.
_LOADING: ContextVar[Path | None] = ContextVar("vocwatch_config_loading", default=None)

DEFAULT_IGNORE = (".*", "*.tmp", "*.part", "*.partial", "*~", "*.swp")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# A tenant id, as it appears in the API's paths.
TENANT_PATTERN = r"^[A-Za-z0-9._-]+$"


class ApiSettings(_Section):
    base_url: AnyHttpUrl = AnyHttpUrl("https://platform.crescendo.ai")
    tenant_id: str = Field(default="tenant-alpha", min_length=1, pattern=TENANT_PATTERN)
    api_key_file: Path | None = None
    connect_timeout_seconds: float = Field(default=10.0, gt=0)
    read_timeout_seconds: float = Field(default=120.0, gt=0)
    # Off by default: a daemon must not pick up a proxy from whatever environment it was started in.
    trust_env: bool = False
    proxy: str | None = None
    verify_tls: bool = True
    ca_bundle: Path | None = None

    @field_validator("base_url")
    @classmethod
    def _only_where(cls, value: AnyHttpUrl) -> AnyHttpUrl:
        # Whatever the URL carries reaches every log line and error that names the API.
        if value.username or value.password:
            raise ValueError(
                "carries a user name or password; the API takes only the bearer key: put the key in "
                "api.api_key_file (vocwatch setup writes it) and write the URL as https://HOST[:PORT][/PATH]"
            )
        if value.query or value.fragment:
            raise ValueError("has a query or fragment; write it as https://HOST[:PORT][/PATH]: the API paths follow it")
        return value


class FoldersSettings(_Section):
    inbox: Path = Path("/var/spool/vocwatch/inbox")
    done: Path = Path("/var/spool/vocwatch/done")
    failed: Path = Path("/var/spool/vocwatch/failed")
    work: Path | None = None  # default: <inbox's parent>/work
    uploaded: Path | None = None  # default: <inbox's parent>/uploaded
    done_after: Literal["accepted", "completed"] = "accepted"
    instance: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]+$")
    # "delete": both files are removed once accepted (or completed); the ledger keeps the row and sha256.
    done_action: Literal["move", "delete"] = "move"
    done_retention_days: float = Field(default=0.0, ge=0)  # > 0: pairs older than this leave done/
    done_layout: str = ""  # e.g. "{accepted:%Y/%m/%d}": sub-folders of done/ by acceptance date

    @field_validator("done_layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        schedule.check_layout(value)
        return value

    @property
    def work_root(self) -> Path:
        return self.work if self.work is not None else self.inbox.parent / "work"

    @property
    def uploaded_root(self) -> Path:
        return self.uploaded if self.uploaded is not None else self.inbox.parent / "uploaded"


class LedgerSettings(_Section):
    path: Path = Path("/var/lib/vocwatch/ledger.sqlite3")
    keep_days: float = Field(default=0.0, ge=0)  # > 0: done and duplicate rows older than this are pruned
    # The fleet ledger instead of the file: a libpq URL (postgresql://USER@HOST/DB?sslmode=verify-full);
    # PG* environment variables fill in what it leaves out. No password here: see password_file.
    url: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    pg_schema: str = Field(default="vocwatch", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    password_file: Path | None = None  # else $CREDENTIALS_DIRECTORY/ledger-password, else libpq's own
    lease_seconds: float = Field(default=60.0, ge=1.0, le=3600.0)

    @field_validator("url")
    @classmethod
    def _no_password(cls, value: str | None) -> str | None:
        if value is not None and re.match(r"^postgres(ql)?://[^/@]*:[^/@]*@", value):
            raise ValueError(
                "holds a password; put it in ledger.password_file or the systemd credential "
                "ledger-password (or libpq's ~/.pgpass) instead"
            )
        return value


class UploadSettings(_Section):
    # "auto": adaptive concurrency (core/concurrency.py), from 4 up to max_workers as the server allows
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 4
    max_workers: int = Field(default=64, ge=1, le=256)  # workers = "auto" never runs more uploads at once
    queue_size: int | None = Field(default=None, ge=1)  # default: 2 x workers
    max_bytes: int = Field(default=25 * 1024 * 1024, ge=1)
    max_backoff_seconds: float = Field(default=300.0, gt=0)
    initial_backoff_seconds: float = Field(default=1.0, gt=0)
    give_up_after_seconds: float | None = Field(default=None, gt=0)
    on_conflict: Literal["fail", "upload"] = "fail"
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    auth_probe_seconds: float = Field(default=30.0, gt=0)
    bandwidth: str = ""  # "20M", or a local-time timetable "08:00,2M 18:00,20M 23:00,off"; "" or "off": none
    window: str = ""  # "20:00-06:00": uploads start only inside this local-time window; "": at any time
    order: Literal["oldest", "arrival"] = "oldest"

    @field_validator("bandwidth")
    @classmethod
    def _bandwidth(cls, value: str) -> str:
        schedule.parse_bandwidth(value)
        return value

    @field_validator("window")
    @classmethod
    def _window(cls, value: str) -> str:
        schedule.parse_window(value)
        return value

    @property
    def timetable(self) -> schedule.Timetable:
        return schedule.parse_bandwidth(self.bandwidth)

    @property
    def upload_window(self) -> schedule.Window | None:
        return schedule.parse_window(self.window)

    @property
    def adaptive(self) -> bool:
        return self.workers == "auto"

    @property
    def threads(self) -> int:
        """Upload threads to start: ``workers``, or ``max_workers`` under "auto" (the limit parks the rest)."""
        return self.max_workers if self.workers == "auto" else self.workers

    @property
    def queue_capacity(self) -> int:
        return self.queue_size if self.queue_size is not None else 2 * self.threads


class WatchSettings(_Section):
    # The floor of pairing.py's completeness rules: no file is taken before unchanged this long, unless
    # renamed in from an ignored name; a file held open by its writer is not taken at all.
    settle_seconds: float = Field(default=2.0, ge=0)
    mode: Literal["auto", "inotify", "poll"] = "auto"
    poll_interval_seconds: float = Field(default=1.0, gt=0)
    rescan_seconds: float = Field(default=60.0, gt=0)
    recursive: bool = True
    require_sidecar: bool = True
    # How long, once settled, a half pair, an empty recording or one held open unchanged waits before failed/.
    pair_timeout_seconds: float = Field(default=600.0, gt=0)
    # A settled recording whose own structure says bytes are missing waits this long, then is failed
    # (reason truncated) or, with truncated = "upload", sent as it is with a warning.
    incomplete_timeout_seconds: float = Field(default=600.0, gt=0)
    truncated: Literal["fail", "upload"] = "fail"
    ignore: tuple[str, ...] = DEFAULT_IGNORE


class MetadataSettings(_Section):
    defaults: dict[str, str | int | float | bool] = Field(default_factory=dict)


class StatusSettings(_Section):
    poll: bool = True
    poll_initial_seconds: float = Field(default=5.0, gt=0)
    poll_max_seconds: float = Field(default=300.0, gt=0)
    poll_factor: float = Field(default=2.0, ge=1)
    # A job the API answers 404 for this long is forgotten: its row ends (job_status "unknown"), and with
    # done_after = "completed" its pair goes from uploaded/ to failed/ as job_unknown.
    unknown_job_seconds: float = Field(default=3600.0, gt=0)


class MetricsSettings(_Section):
    listen: str | None = Field(default=None, pattern=r"^[^:\s]*:\d{1,5}$")


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"
    redact: bool = False

    @field_validator("level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value


class Settings(BaseSettings):
    """Every setting; built only by :func:`load_settings` and passed down, never global."""

    model_config = SettingsConfigDict(
        env_prefix="VOCWATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    api: ApiSettings = ApiSettings()
    folders: FoldersSettings = FoldersSettings()
    ledger: LedgerSettings = LedgerSettings()
    upload: UploadSettings = UploadSettings()
    watch: WatchSettings = WatchSettings()
    metadata: MetadataSettings = MetadataSettings()
    status: StatusSettings = StatusSettings()
    metrics: MetricsSettings = MetricsSettings()
    log: LogSettings = LogSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then VOCWATCH_SECTION__KEY variables, then the TOML file being loaded, if any."""
        sources: list[PydanticBaseSettingsSource] = [init_settings, _EnvSource(settings_cls)]
        toml_path = _LOADING.get()
        if toml_path is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_path))
        return tuple(sources)

    @property
    def instance(self) -> str:
        """This daemon's work sub-folder: host name plus a short hash of the ledger path."""
        if self.folders.instance:
            return self.folders.instance
        digest = hashlib.sha256(str(self.ledger.path.absolute()).encode()).hexdigest()[:8]
        host = "".join(c if c.isalnum() or c in "._-" else "_" for c in socket.gethostname())
        return f"{host or 'host'}-{digest}"


class ConfigError(Exception):
    """A configuration that cannot run; ``problems`` holds one line per bad key."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def load_settings(path: Path | None = None, **overrides: Any) -> Settings:
    """Read ``path`` (or ``$VOCWATCH_CONFIG``), apply env overrides; raise ConfigError per bad key."""
    if path is None and os.environ.get("VOCWATCH_CONFIG"):
        path = Path(os.environ["VOCWATCH_CONFIG"])
    if path is not None:
        if not path.is_file():
            raise ConfigError([f"{path}: config file not found (give --config PATH or VOCWATCH_CONFIG)"])
        try:
            import tomllib

            with path.open("rb") as fh:
                tomllib.load(fh)
        except (OSError, ValueError) as exc:
            raise ConfigError([f"{path}: not valid TOML: {exc}"]) from exc
    toml_path = path
    # The file reaches Settings' sources through a context variable, not a subclass made per call: each new
    # pydantic class pays its own schema build (about a millisecond of every start).
    token = _LOADING.set(toml_path)
    try:
        loaded = Settings(**overrides)
    except ValidationError as exc:
        raise ConfigError([_describe(err, toml_path) for err in _unioned(exc.errors())]) from exc
    finally:
        _LOADING.reset(token)
    return loaded


def _unioned(errors: list[Any]) -> list[Any]:
    """A key that takes a number or a word (upload.workers: 4 or "auto") fails once per alternative: one
    message under the key's own name instead, the number's complaint with the word offered beside it."""
    words = {tuple(e["loc"][:-1]): e for e in errors if e["loc"] and str(e["loc"][-1]).startswith("literal[")}
    out = []
    for err in errors:
        loc = tuple(err["loc"])
        if (
            loc
            and str(loc[-1]).startswith("literal[")
            and any(tuple(o["loc"][:-1]) == loc[:-1] for o in errors if o is not err)
        ):
            continue
        if loc and loc[:-1] in words and loc[-1] in ("int", "constrained-int"):
            word = str(words[loc[:-1]]["loc"][-1]).removeprefix("literal[").removesuffix("]")
            err = {**err, "loc": loc[:-1], "msg": f"{err['msg']}, or {word}"}
        out.append(err)
    return out


class _EnvSource(PydanticBaseSettingsSource):
    """``VOCWATCH_SECTION__KEY`` variables only, so VOCWATCH_CONFIG and VOCWATCH_API_KEY are not keys."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in os.environ.items():
            if not name.upper().startswith("VOCWATCH_") or "__" not in name:
                continue
            section, _, key = name[len("VOCWATCH_") :].lower().partition("__")
            parsed: Any = value
            if value[:1] in "[{":
                import json

                try:
                    parsed = json.loads(value)
                except ValueError:
                    parsed = value
            out.setdefault(section, {})[key] = parsed
        return out


def _describe(err: Any, toml_path: Path | None) -> str:
    key = ".".join(str(p) for p in err["loc"])
    where = f"{toml_path}: " if toml_path else ""
    env = "VOCWATCH_" + "__".join(str(p) for p in err["loc"][:2]).upper()
    if err["type"] == "extra_forbidden":
        return f"{where}{key}: unknown key (check its spelling against config.example.toml, or unset {env})"
    if err["type"] == "value_error":  # our own validators' messages quote the value and say what to write
        return f"{where}{key}: {str(err['msg']).removeprefix('Value error, ')}"
    got = err.get("input")
    shown = "" if isinstance(got, dict) else f" (got {got!r})"
    return f"{where}{key}: {err['msg']}{shown}; set it in the file or with {env}"


def resolve_api_key(settings: Settings) -> SecretStr | None:
    """The key from VOCWATCH_API_KEY, CRESCENDO_API_KEY, systemd's credential or api_key_file.

    Read anew on each call, so a rotated key file needs no restart.
    """
    for var in ("VOCWATCH_API_KEY", "CRESCENDO_API_KEY"):
        value = os.environ.get(var, "").strip()
        if value:
            return SecretStr(value)
    candidates: list[Path] = []
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        candidates.append(Path(os.environ["CREDENTIALS_DIRECTORY"]) / "api-key")
    if settings.api.api_key_file is not None:
        candidates.append(settings.api.api_key_file)
    for candidate in candidates:
        try:
            # Not UTF-8 (a UTF-16 editor): U+FFFD makes it a key that cannot be sent, refused as such, never a crash.
            value = candidate.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            continue
        if value:
            return SecretStr(value)
    return None


def api_key_sources(settings: Settings) -> str:
    """Where a key is looked for, for error messages (never the key itself)."""
    places = ["VOCWATCH_API_KEY", "CRESCENDO_API_KEY"]
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        places.append("$CREDENTIALS_DIRECTORY/api-key")
    if settings.api.api_key_file is not None:
        places.append(f"api.api_key_file ({settings.api.api_key_file})")
    return ", ".join(places)
