"""No Docker engine runs here: parse docker-compose.yml and check what production depends on."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helpers import ROOT


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_redis_is_7_with_aof_everysec_noeviction_a_volume_and_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert redis["image"].startswith("redis:7")
    cmd = " ".join(redis["command"])
    assert (
        "--appendonly yes" in cmd
        and "--appendfsync everysec" in cmd
        and "--maxmemory-policy noeviction" in cmd
    )
    assert any(v.endswith(":/data") for v in redis["volumes"]) and "redis-data" in compose["volumes"]
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_workers_scale_and_share_one_redis(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    assert "container_name" not in worker and "ports" not in worker  # --scale worker=4 must work
    assert worker["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert worker["command"][:4] == ["celery", "-A", "tasks", "worker"]
    assert worker["depends_on"]["redis"]["condition"] == "service_healthy"


def test_exactly_one_beat(compose: dict[str, Any]) -> None:
    beat = compose["services"]["beat"]
    assert beat["command"][:4] == ["celery", "-A", "tasks", "beat"]
    assert beat["deploy"]["replicas"] == 1


def test_flower_needs_basic_auth_and_is_not_open_by_default(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert flower["profiles"] == ["flower"]
    assert "FLOWER_BASIC_AUTH" in " ".join(flower["command"]) and "exit 1" in " ".join(flower["command"])
    assert all(p.startswith("127.0.0.1:") for p in flower["ports"])


def test_emulator_is_under_a_profile(compose: dict[str, Any]) -> None:
    assert compose["services"]["emulator"]["profiles"] == ["emulator"]
    assert "clevertap-pipeline emulator" in " ".join(compose["services"]["emulator"]["command"])


def test_credentials_come_from_an_env_file_never_from_the_compose_file(compose: dict[str, Any]) -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert "CLEVERTAP_PASSCODE" not in env and "CLEVERTAP_ACCOUNT_ID" not in env, name
        if name in ("prometheus", "grafana"):  # third-party images get no .env: it holds the passcode
            assert "env_file" not in service, name
        elif name != "redis":
            assert service["env_file"] == ".env"
    assert "CLEVERTAP_PASSCODE=" not in text and "CLEVERTAP_PASSCODE:" not in text
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    example = (ROOT / ".env.example").read_text()
    assert "CLEVERTAP_PASSCODE=\n" in example and "FLOWER_BASIC_AUTH=" in example


def test_the_image_installs_the_package_with_flower() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11" in dockerfile and "pip install '.[flower]'" in dockerfile
    assert "USER pipeline" in dockerfile


def test_monitoring_profile_runs_the_exporter_prometheus_and_grafana_from_deploy(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("metrics", "prometheus", "grafana"):
        assert services[name]["profiles"] == ["monitoring"], name
        assert all(p.startswith("127.0.0.1:") for p in services[name].get("ports", [])), name
    assert services["metrics"]["command"][:2] == ["clevertap-pipeline", "metrics"]
    assert "ports" not in services["metrics"]  # scraped inside the compose network only
    for service in ("prometheus", "grafana"):
        for volume in services[service]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), volume
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["metrics:9464"]
    assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yml"]
    grafana = services["grafana"]
    assert "GRAFANA_ADMIN_PASSWORD" in " ".join(grafana["entrypoint"]) and "exit 1" in " ".join(
        grafana["entrypoint"]
    )
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert "GRAFANA_ADMIN_PASSWORD=" in (ROOT / ".env.example").read_text()


def test_the_collector_service_takes_its_write_key_from_env_and_is_loopback_on_the_host(
    compose: dict[str, Any],
) -> None:
    collector = compose["services"]["collector"]
    assert collector["profiles"] == ["collector"] and collector["env_file"] == ".env"
    assert (
        collector["command"][:2] == ["clevertap-pipeline", "collect"] and "--workers" in collector["command"]
    )
    assert all(p.startswith("127.0.0.1:") for p in collector["ports"])
    assert "/health" in " ".join(collector["healthcheck"]["test"])
    assert "CLEVERTAP_WRITE_KEY=" in (ROOT / ".env.example").read_text()


def test_the_console_service_is_loopback_on_the_host_and_its_secrets_come_from_env(
    compose: dict[str, Any],
) -> None:
    console = compose["services"]["console"]
    assert console["profiles"] == ["console"] and console["env_file"] == ".env"
    assert console["command"][:2] == ["clevertap-pipeline", "console"]
    assert all(p.startswith("127.0.0.1:") for p in console["ports"])
    example = (ROOT / ".env.example").read_text()
    assert "CLEVERTAP_CONSOLE_PASSWORD=\n" in example and "CLEVERTAP_CONSOLE_KEY=\n" in example
