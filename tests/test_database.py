"""DSN handling and the embedded server's configuration."""

import psycopg
import pytest

from services.postgres import redact, server_settings


@pytest.mark.parametrize(
    "dsn",
    [
        "host=db user=app password=s3cret dbname=x",
        "postgresql://app:s3cret@db:5432/x",
        "postgresql://app:s3cret@db/x?sslmode=require",
    ],
)
def test_redact_hides_the_password(dsn):
    redacted = redact(dsn)
    assert "s3cret" not in redacted
    assert "***" in redacted
    assert "db" in redacted


def test_redact_masks_other_urls_and_leaves_them_whole_without_password():
    assert redact("redis://:s3cret@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_redact_keeps_a_dsn_without_password():
    assert "password" not in redact("host=127.0.0.1 port=5 user=postgres")


def test_server_settings_are_the_seeds():
    assert server_settings() == {"shared_buffers": "512MB", "max_connections": "500", "max_wal_size": "4GB"}


@pytest.mark.slow
def test_embedded_server_runs_with_the_seeds_settings(postgres):
    with psycopg.connect(postgres.dsn) as conn:
        shown = {name: conn.execute(f"SHOW {name}").fetchone()[0] for name in server_settings()}
        assert shown == server_settings()
        assert conn.info.host == "127.0.0.1"
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
        assert {"spans", "metrics", "logs", "quarantine", "firehose_runs"} <= tables
