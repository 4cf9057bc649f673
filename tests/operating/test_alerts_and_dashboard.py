"""deploy/prometheus/alerts.yml checked by the real promtool, and the rules and the Grafana
dashboard cross-checked against the metrics chatd exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import embedded_settings
from tests.processes import settings_env

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "alerts.yml"
RULE_TESTS = DEPLOY / "prometheus" / "alerts.test.yml"
DASHBOARD = DEPLOY / "grafana" / "chatd-dashboard.json"
# Series Prometheus itself makes, not chatd.
PROMETHEUS_OWN = {"up"}
# Series no chatd process serves on /metrics: `chatd backup --metrics-file` writes them for
# node_exporter's textfile collector (checked against the file the command writes).
BACKUP_TEXTFILE = re.compile(r"chatd_backup_[a-z0-9_]+")
_METRIC = re.compile(r"\b(chatd_[a-z0-9_]+|up)\b")


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is missing: `make ops-tools` installs it (Debian package prometheus)"
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=RULES.parent)


def test_promtool_accepts_the_rules() -> None:
    result = _promtool("check", "rules", RULES.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_pass_their_promtool_unit_tests() -> None:
    result = _promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_example_prometheus_configuration_is_valid() -> None:
    result = _promtool("check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def _rule_expressions() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def _exposed(text: str) -> set[str]:
    """Every series name a scrape of chatd can hold, a labelled metric with no child yet included."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {
            "counter": ("_total",),
            "histogram": ("_bucket", "_sum", "_count"),
            "summary": ("_sum", "_count", ""),
        }.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
        names.update(sample.name for sample in family.samples)
    return names


async def test_rules_and_dashboard_use_only_metrics_chatd_exposes(api) -> None:  # type: ignore[no-untyped-def]
    # Drive the pipeline once so that every labelled metric a message touches has children.
    token = await api.create_application()
    await api.create_message(token, await api.create_chat(token), "hello")
    await api.settle()
    response = await api.client.get("/metrics")
    exposed = _exposed(await response.text()) | PROMETHEUS_OWN
    for source, expressions in (("alerts.yml", _rule_expressions()), ("dashboard", _dashboard_expressions())):
        used = {name for expression in expressions for name in _METRIC.findall(expression)}
        used = {name for name in used if not BACKUP_TEXTFILE.fullmatch(name)}
        assert len(used) >= 8, (source, used)  # the pattern found the metrics, not nothing
        assert used <= exposed, f"{source} uses metrics chatd does not expose: {sorted(used - exposed)}"


def test_every_dashboard_panel_has_a_query_and_a_unique_id() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels)
    assert all(panel["targets"] and all(t["expr"].strip() for t in panel["targets"]) for panel in panels)


def _chatd(*args: str, env: dict[str, str]) -> None:
    done = subprocess.run([sys.executable, "-m", "chatd", *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"chatd {' '.join(args)}: {done.stderr[-2000:]}"


def test_backup_alerts_use_the_metrics_chatd_backup_writes(tmp_path: Path) -> None:
    """The ChatdBackup* rules read gauges of the file `chatd backup --metrics-file` writes (embedded set)."""
    env = settings_env(embedded_settings(tmp_path / "data"))
    _chatd("migrate", env=env)
    textfile = tmp_path / "node-exporter" / "chatd_backup.prom"
    began = time.time()
    _chatd("backup", str(tmp_path / "backups"), "--keep", "7", "--metrics-file", str(textfile), env=env)
    families = {family.name: family for family in text_string_to_metric_families(textfile.read_text())}
    used = {name for expression in _rule_expressions() for name in BACKUP_TEXTFILE.findall(expression)}
    assert "chatd_backup_last_success_timestamp_seconds" in used, used
    assert used <= set(families), f"alerts.yml uses gauges the backup does not write: {sorted(used - set(families))}"
    assert all(families[name].type == "gauge" for name in used)
    (sample,) = families["chatd_backup_last_success_timestamp_seconds"].samples
    assert began - 1 <= sample.value <= time.time(), "the unix time of this backup's snapshot"
