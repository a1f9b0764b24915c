"""docker-compose.yml, checked without a Docker engine.

With a client that has `docker compose`, its normalized `config` output is checked (it parses and
interpolates without an engine); otherwise the YAML itself, with `${VAR:-default}` resolved the way
Compose would with no such variable set.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict

from services.postgres import SERVER_CONF, server_settings
from services.redis_server import PERSISTENCE

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
SERVICES = {"postgres", "replica", "pgbouncer", "redis", "master", "worker"}
SETTINGS_PATH = "/etc/firehose/postgresql.conf"
"""Where the compose file mounts schema/postgresql.conf, and what docker/include-firehose-conf.sh includes."""
LOCUST_OPTIONS = {
    "--pg-dsn": "FIREHOSE_PG_DSN",
    "--pgbouncer-dsn": "FIREHOSE_PGBOUNCER_DSN",
    "--redis-url": "FIREHOSE_REDIS_URL",
    "--analyst-dsn": "FIREHOSE_ANALYST_DSN",
}
COMPOSE_TIMEOUT_S = 30
_DEFAULTED = re.compile(r"\$\{(\w+):?-([^}]*)\}")


def _has_compose() -> bool:
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=COMPOSE_TIMEOUT_S)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _with_defaults(value):
    """Resolve `${VAR:-default}` everywhere, as Compose does when VAR is unset."""
    if isinstance(value, dict):
        return {key: _with_defaults(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_with_defaults(item) for item in value]
    return _DEFAULTED.sub(r"\2", value) if isinstance(value, str) else value


@pytest.fixture(scope="module")
def services() -> dict[str, dict]:
    if _has_compose():
        env = {key: value for key, value in os.environ.items() if not key.endswith(("_PASSWORD", "_PORT"))}
        result = subprocess.run(
            ["docker", "compose", "-f", str(COMPOSE_FILE), "config"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=COMPOSE_TIMEOUT_S, check=True,
        )  # fmt: skip
        return yaml.safe_load(result.stdout)["services"]
    return _with_defaults(yaml.safe_load(COMPOSE_FILE.read_text()))["services"]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _binds(service: dict) -> dict[str, Path]:
    """Bind mounts of a service: target in the container -> file in the repository."""
    binds = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                binds[volume["target"]] = (REPO / volume["source"]).resolve()
        else:
            source, target = volume.split(":")[:2]
            if source.startswith((".", "/")):
                binds[target] = (REPO / source).resolve()
    return binds


def _depends_on(service: dict) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends.items()}


def _command(service: dict) -> str:
    command = service.get("command") or []
    return command if isinstance(command, str) else " ".join(command)


def _container_ports(service: dict) -> set[int]:
    ports = set()
    for port in service.get("ports") or []:
        ports.add(int(port["target"]) if isinstance(port, dict) else int(str(port).rsplit(":", 1)[-1]))
    return ports


def test_every_service_is_defined(services):
    assert set(services) >= SERVICES


def test_postgres_reads_its_settings_from_the_shared_file(services):
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    binds = _binds(postgres)
    assert binds[SETTINGS_PATH] == SERVER_CONF
    init_scripts = [path for target, path in binds.items() if target.startswith("/docker-entrypoint-initdb.d/")]
    assert any(SETTINGS_PATH in path.read_text() for path in init_scripts), "no init script includes the settings"
    for name in ("postgres", "replica"):  # one place for the settings: never repeated as -c flags
        assert not any(setting in _command(services[name]) for setting in server_settings())


def test_pgbouncer_pools_transactions_for_thousands_of_clients(services):
    pgbouncer = services["pgbouncer"]
    env = _environment(pgbouncer)
    assert env["POOL_MODE"] == "transaction"
    assert env["DB_HOST"] == "postgres"
    assert int(env["MAX_CLIENT_CONN"]) >= 1000
    assert int(env["DEFAULT_POOL_SIZE"]) < int(server_settings()["max_connections"])
    assert _depends_on(pgbouncer)["postgres"] == "service_healthy"


def test_replica_streams_from_the_primary(services):
    primary, replica = _environment(services["postgres"]), _environment(services["replica"])
    assert replica["PRIMARY_HOST"] == "postgres"
    assert replica["REPLICATION_USER"] == primary["REPLICATION_USER"]
    assert replica["REPLICATION_SLOT"] == primary["REPLICATION_SLOT"]
    assert _depends_on(services["replica"])["postgres"] == "service_healthy"
    binds = _binds(services["replica"])
    entrypoint = services["replica"]["entrypoint"]
    script = binds[entrypoint[0] if isinstance(entrypoint, list) else entrypoint.split()[0]].read_text()
    assert "pg_basebackup" in script and "--write-recovery-conf" in script and "--slot=" in script
    # The cloned postgresql.conf includes the settings file, so the replica mounts it at the same place.
    assert binds[SETTINGS_PATH] == SERVER_CONF
    primary_scripts = " ".join(path.read_text() for path in _binds(services["postgres"]).values())
    assert "pg_create_physical_replication_slot" in primary_scripts and "REPLICATION" in primary_scripts


def test_redis_persists_like_the_local_one(services):
    """The compose Redis loses nothing it acknowledged across a restart, as services/redis_server.py's does."""
    command = services["redis"]["command"]
    for flag, value in zip(PERSISTENCE[::2], PERSISTENCE[1::2], strict=True):
        assert command[command.index(flag) + 1] == value
    assert any(volume.endswith(":/data") for volume in services["redis"]["volumes"])


def test_workers_can_scale(services):
    worker = services["worker"]
    assert "container_name" not in worker and not worker.get("ports")
    assert "--worker" in _command(worker) and "--master-host master" in _command(worker)
    assert 8089 in _container_ports(services["master"])


def test_the_web_ui_leaves_loopback_only_where_the_compose_file_says_so(services):
    assert "web-host = 127.0.0.1" in (REPO / "locust.conf").read_text().splitlines()
    assert "--web-host 0.0.0.0" in _command(services["master"])  # published by the container's port mapping


@pytest.mark.parametrize("name", ["master", "worker"])
def test_locust_gets_the_compose_services_addresses(services, name):
    service = services[name]
    env = _environment(service)
    for option, variable in LOCUST_OPTIONS.items():
        assert f'{option} "$${variable}"' in _command(service) or f'{option} "${variable}"' in _command(service)
    assert conninfo_to_dict(env["FIREHOSE_PG_DSN"])["host"] == "postgres"
    assert conninfo_to_dict(env["FIREHOSE_PGBOUNCER_DSN"])["host"] == "pgbouncer"
    assert urlsplit(env["FIREHOSE_REDIS_URL"]).hostname == "redis"


def test_every_mounted_file_is_in_the_repository(services):
    for name, service in services.items():
        for target, path in _binds(service).items():
            assert path.is_file() and path.is_relative_to(REPO), f"{name}: {target} <- {path}"
            if path.suffix == ".sh":  # initdb sources (not runs) a script without the x bit
                assert os.access(path, os.X_OK), f"{path} is not executable"
        if build := service.get("build"):
            context = REPO / (build if isinstance(build, str) else build["context"])
            assert (
                context / (build.get("dockerfile", "Dockerfile") if isinstance(build, dict) else "Dockerfile")
            ).is_file()


def test_start_order_waits_for_health(services):
    for name, service in services.items():
        for dependency, condition in _depends_on(service).items():
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no healthcheck"
    assert _depends_on(services["master"]) == dict.fromkeys(
        ("postgres", "replica", "pgbouncer", "redis"), "service_healthy"
    )
    assert _depends_on(services["worker"]) == {"master": "service_healthy"}


def test_passwords_come_from_the_environment():
    """Only dev defaults, each overridable: every password in the file is a `${VAR:-default}`."""
    for name, service in yaml.safe_load(COMPOSE_FILE.read_text())["services"].items():
        for key, value in _environment(service).items():
            if "PASSWORD" in key:
                assert value.startswith("${"), f"{name}: {key}"
            if "password=" in value:
                assert conninfo_to_dict(value)["password"].startswith("${"), f"{name}: {key}"
