"""The fleet ledger's settings, without a server: what is refused at start, and what is sent to libpq."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from vocwatch.edges.config import LedgerSettings
from vocwatch.edges.ledger_pg import conninfo, redact


def test_a_password_in_ledger_url_is_refused_and_the_sqlite_file_stays_the_default() -> None:
    assert LedgerSettings().url is None
    with pytest.raises(ValidationError, match="password_file"):
        LedgerSettings(url="postgresql://vocwatch:secret@db/ops")
    LedgerSettings(url="postgresql://vocwatch@db:5432/ops?sslmode=verify-full")
    with pytest.raises(ValidationError):
        LedgerSettings(url="mysql://db/ops")


def test_libpq_gets_the_url_plus_timeouts_and_the_password_but_logs_never_see_it() -> None:
    info = conninfo("postgresql://vocwatch@db/ops?connect_timeout=2", "s3cret", "host-a")
    assert "connect_timeout=2" in info and "keepalives=1" in info and "password=s3cret" in info
    assert "s3cret" not in redact(info) and "db" in redact(info)
