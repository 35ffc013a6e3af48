"""docker-compose.yaml, Dockerfile and .env.example, checked without Docker (CI has none).

What can be known from the files alone: the compose file is valid Compose (against the Compose
Specification's JSON schema as shipped by the pinned check-jsonschema package), every variable it
interpolates is documented, the image installs what requirements.txt pins, the connections parse
as Airflow connections, nothing listens beyond loopback, and the startup order is sound.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import pytest
import yaml
from dotenv import dotenv_values
from jsonschema.validators import validator_for

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"

ONE_SHOT = {"airflow-init", "es-setup", "quotes-setup"}
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "quotes-setup",
}
# Started only with `--profile celery` (or COMPOSE_PROFILES=celery), together with AIRFLOW_EXECUTOR=CeleryExecutor.
CELERY_PROFILE = {"redis", "airflow-worker"}
PIPELINE_DAGS = ("quotes_producer", "quotes_indexer", "quotes_reconcile")
STACK_VERSION = "9.2.0"


# ---------------------------------------------------------------- Compose interpolation (the spec's rules)

_TOKEN = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<braced>[^}]*)\}|(?P<named>[A-Za-z_][A-Za-z0-9_]*))")
_BRACED = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>.*))?", re.DOTALL)


class MissingVariable(LookupError):
    """A ``${VAR:?message}`` whose variable is unset or empty: Compose refuses to start."""


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$$``, ``$VAR`` and ``${VAR[:-?+]arg}`` resolved as Compose does."""

    def replace(match: re.Match[str]) -> str:
        if match.group("escaped"):
            return "$"
        if name := match.group("named"):
            return env.get(name, "")
        braced = _BRACED.fullmatch(match.group("braced"))
        if braced is None:
            raise ValueError(f"invalid interpolation {match.group(0)!r}")
        name, op, arg = braced.group("name", "op", "arg")
        value = env.get(name)
        if op is None:
            return value or ""
        unset = value is None if op in ("-", "?", "+") else not value
        if op.endswith("-"):
            return arg if unset else value
        if op.endswith("+"):
            return "" if unset else arg
        if unset:
            raise MissingVariable(f"{name}: {arg}")
        return value

    return _TOKEN.sub(replace, text)


def referenced_variables(text: str) -> set[str]:
    """Names of the variables a string interpolates (``$$`` is an escaped dollar, not a variable)."""
    names = set()
    for match in _TOKEN.finditer(text):
        if match.group("named"):
            names.add(match.group("named"))
        elif match.group("braced"):
            braced = _BRACED.fullmatch(match.group("braced"))
            assert braced is not None, f"invalid interpolation {match.group(0)!r}"
            names.add(braced.group("name"))
    return names


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML document (Compose interpolates values, not keys)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, Mapping):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings(value)


def resolve(node: Any, env: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, Mapping):
        return {key: resolve(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [resolve(value, env) for value in node]
    return node


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def raw_compose() -> dict[str, Any]:
    """docker-compose.yaml as YAML (anchors and merge keys resolved), before interpolation."""
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    values = dotenv_values(ENV_EXAMPLE)
    return {key: value or "" for key, value in values.items()}


@pytest.fixture(scope="module")
def filled_env(env_example: dict[str, str]) -> dict[str, str]:
    """.env.example with the secrets it leaves blank filled in, as a user is told to."""
    from cryptography.fernet import Fernet

    env = dict(env_example)
    env["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    env["AIRFLOW_JWT_SECRET"] = "a-jwt-secret-made-up-for-the-test"
    env["QUOTEFLOW_INDEXER_START_DATE"] = "2026-11-28T03:00:00+00:00"
    return env


@pytest.fixture(scope="module")
def compose(raw_compose: dict[str, Any], filled_env: dict[str, str]) -> dict[str, Any]:
    """docker-compose.yaml as Compose sees it with that .env."""
    return resolve(raw_compose, filled_env)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {str(key): "" if value is None else str(value) for key, value in env.items()}


def default_profile(services: Mapping[str, Any]) -> set[str]:
    """The services `docker compose up` starts without a --profile."""
    return {name for name, service in services.items() if not service.get("profiles")}


def depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


# ---------------------------------------------------------------- (1) the Compose Specification schema


def compose_spec_schema() -> tuple[dict[str, Any], str]:
    """The Compose Specification schema vendored in the installed check-jsonschema package."""
    vendor = resources.files("check_jsonschema") / "builtin_schemas" / "vendor"
    raw = (vendor / "compose-spec.json").read_bytes()
    expected = (vendor / "sha256" / "compose-spec.sha256").read_text().split()[0]
    assert hashlib.sha256(raw).hexdigest() == expected, "compose-spec.json differs from the package's own checksum"
    return json.loads(raw), metadata.version("check-jsonschema")


def schema_errors(document: Mapping[str, Any]) -> list[str]:
    schema, _ = compose_spec_schema()
    validator_cls = validator_for(schema)
    validator_cls.check_schema(schema)
    errors = validator_cls(schema).iter_errors(document)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors]


def test_schema_comes_from_the_pinned_package() -> None:
    schema, version = compose_spec_schema()
    pins = (ROOT / "requirements-dev.txt").read_text() + (ROOT / "constraints.txt").read_text()
    assert f"check-jsonschema=={version}" in pins
    assert schema["title"] == "Compose Specification"


def test_compose_file_validates_against_the_compose_specification(compose: dict[str, Any]) -> None:
    assert schema_errors(compose) == []


def test_the_schema_check_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    broken = copy.deepcopy(compose)
    broken["services"]["kafka"]["helthcheck"] = broken["services"]["kafka"].pop("healthcheck")
    broken["services"]["postgres"]["ports"] = {"5432": "5432"}
    errors = schema_errors(broken)
    assert any("helthcheck" in error for error in errors), errors
    assert any(error.startswith("services/postgres/ports") for error in errors), errors


# ---------------------------------------------------------------- (2) variables and .env.example


def test_every_referenced_variable_is_documented(raw_compose: dict[str, Any], env_example: dict[str, str]) -> None:
    referenced = set().union(*(referenced_variables(s) for s in strings(raw_compose)))
    assert referenced, "the compose file interpolates nothing: the scan is broken"
    assert sorted(referenced - set(env_example)) == []
    assert sorted(set(env_example) - referenced) == [], ".env.example documents variables the compose file never uses"


def test_every_variable_in_env_example_has_a_comment() -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    for number, line in enumerate(lines):
        if line and not line.startswith("#"):
            assert "=" in line, f".env.example line {number + 1} is not KEY=value: {line!r}"
            assert number > 0 and lines[number - 1].startswith("# "), f"{line.split('=')[0]} has no comment above it"


def test_placeholder_passwords_are_safe_inside_json_and_urls(env_example: dict[str, str]) -> None:
    secrets = {k: v for k, v in env_example.items() if k.endswith(("_PASSWORD", "_KEY", "_SECRET"))}
    assert {"ELASTIC_PASSWORD", "KIBANA_PASSWORD", "POSTGRES_PASSWORD", "AIRFLOW_ADMIN_PASSWORD"} <= set(secrets)
    for name, value in secrets.items():
        assert re.fullmatch(r"[A-Za-z0-9._-]*", value), f"{name}={value!r} would break a JSON string or URL"
    assert len(env_example["KIBANA_ENCRYPTION_KEY"]) >= 32


def test_blank_secrets_stop_compose_with_a_message(raw_compose: dict[str, Any], env_example: dict[str, str]) -> None:
    """`cp .env.example .env` without generating the keys fails at once, naming the variable."""
    blank = sorted(k for k, v in env_example.items() if not v)
    must_generate = ["AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "QUOTEFLOW_INDEXER_START_DATE"]
    assert blank == sorted(["AIRFLOW_CONN_TRADINGVIEW_DEFAULT", *must_generate])
    for name in must_generate:
        env = {**env_example, **{other: "x" for other in must_generate if other != name}}
        with pytest.raises(MissingVariable, match=f"^{name}: set {name} in .env"):
            resolve(raw_compose, env)


def test_interpolation_follows_compose_rules() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("$$HOME ${SET} $SET ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${SET:+y}", env) == "$HOME x x d  d y"
    with pytest.raises(MissingVariable, match="EMPTY: say so"):
        interpolate("${EMPTY:?say so}", env)
    assert referenced_variables("$${NOT_A_VAR} ${A:-1} $B") == {"A", "B"}


# ---------------------------------------------------------------- (3) the image


def dockerfile_args_and_from() -> tuple[dict[str, str], str]:
    args: dict[str, str] = {}
    for line in DOCKERFILE.read_text().splitlines():
        if match := re.fullmatch(r"ARG (\w+)=(\S+)", line.strip()):
            args[match.group(1)] = match.group(2)
        elif line.startswith("FROM "):
            return args, line.split()[1]
    raise AssertionError("Dockerfile has no FROM")


def test_image_is_the_pinned_airflow_on_the_constraints_python() -> None:
    args, image = dockerfile_args_and_from()
    resolved = interpolate(image, args)
    pin = re.search(r"^apache-airflow==(\S+)$", (ROOT / "requirements.txt").read_text(), re.MULTILINE)
    assert pin is not None
    frozen_on = re.search(r"on Python (\d+\.\d+)", (ROOT / "constraints.txt").read_text().splitlines()[0])
    assert frozen_on is not None
    assert resolved == f"apache/airflow:{pin.group(1)}-python{frozen_on.group(1)}"


def test_image_installs_requirements_with_the_constraints() -> None:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    copy_line = next(line for line in text.splitlines() if line.startswith("COPY "))
    assert {"requirements.txt", "constraints.txt"} <= set(copy_line.split()[1:-1])
    dest = copy_line.split()[-1]
    install = next(line for line in text.splitlines() if line.startswith("RUN ") and "pip install" in line)
    words = install.split()
    assert words[words.index("-r") + 1] == f"{dest}requirements.txt"
    assert words[words.index("-c") + 1] == f"{dest}constraints.txt"
    assert '"apache-airflow==${AIRFLOW_VERSION}"' in words
    assert "--no-cache-dir" in words


def test_build_context_holds_the_dependency_files_and_no_secrets(raw_compose: dict[str, Any]) -> None:
    def included(path: str) -> bool:
        verdict = True
        for pattern in DOCKERIGNORE.read_text().splitlines():
            pattern = pattern.strip()
            if not pattern or pattern.startswith("#"):
                continue
            negated = pattern.startswith("!")
            if Path(path).match(pattern.lstrip("!")):
                verdict = negated
        return verdict

    assert included("requirements.txt") and included("constraints.txt")
    assert included("pyproject.toml") and included("include/quoteflow/settings.py")
    assert not included("include/quoteflow/__pycache__/settings.cpython-311.pyc")
    assert not any(included(p) for p in (".env", ".venv", ".state", ".git", "dags"))
    assert raw_compose["x-airflow-common"]["build"] == "."


# ---------------------------------------------------------------- (4) connections


def test_connections_parse_as_airflow_connections(services: dict[str, Any], filled_env: dict[str, str]) -> None:
    from airflow.models.connection import Connection

    from quoteflow.settings import connection_from_env, elasticsearch_client_args, kafka_config

    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        conns = {k.removeprefix("AIRFLOW_CONN_").lower(): v for k, v in env.items() if k.startswith("AIRFLOW_CONN_")}
        expected = {"kafka_default", "elasticsearch_default", "kibana_default", "tradingview_default"}
        assert set(conns) == expected | {"airflow_metadata_db"}, name
        parsed = {cid: Connection.from_json(v, conn_id=cid) for cid, v in conns.items() if v}

        kafka = parsed["kafka_default"]
        assert kafka.conn_type == "kafka"
        assert kafka.extra_dejson == {
            "bootstrap.servers": "kafka:19092",
            "group.id": "quoteflow-indexer",
            "enable.auto.commit": False,
        }
        es = parsed["elasticsearch_default"]
        assert (es.conn_type, es.host, es.port, es.schema) == ("elasticsearch", "elasticsearch", 9200, "http")
        assert (es.login, es.password) == ("elastic", filled_env["ELASTIC_PASSWORD"])
        kibana = parsed["kibana_default"]
        assert (kibana.conn_type, kibana.host, kibana.port, kibana.schema) == ("http", "kibana", 5601, "http")
        assert (kibana.login, kibana.password) == ("elastic", filled_env["ELASTIC_PASSWORD"])
        assert "tradingview_default" not in parsed, "an empty AIRFLOW_CONN_TRADINGVIEW_DEFAULT stays undefined"
        # quotes_maintenance's db clean reaches the same database as Airflow itself.
        meta = parsed["airflow_metadata_db"]
        assert (meta.conn_type, meta.host, meta.port, meta.schema) == (
            "postgresql+psycopg2",
            "postgres",
            5432,
            "airflow",
        )
        assert (meta.login, meta.password) == ("airflow", filled_env["POSTGRES_PASSWORD"])

        # The library reads the same JSON and builds clients for the containers' addresses.
        assert kafka_config(connection_from_env("kafka_default", env).extra)["bootstrap.servers"] == "kafka:19092"
        es_args = elasticsearch_client_args(connection_from_env("elasticsearch_default", env))
        assert es_args["hosts"] == ["http://elasticsearch:9200"]
        assert es_args["basic_auth"] == ("elastic", filled_env["ELASTIC_PASSWORD"])


def test_connection_hosts_are_services_on_their_container_ports(services: dict[str, Any]) -> None:
    kafka_env = environment(services["kafka"])
    assert "PLAINTEXT://kafka:19092" in kafka_env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert "PLAINTEXT://:19092" in kafka_env["KAFKA_LISTENERS"].split(",")
    assert any(p.endswith(":9200") for p in services["elasticsearch"]["ports"])
    assert any(p.endswith(":5601") for p in services["kibana"]["ports"])


def test_an_empty_connection_variable_means_no_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    monkeypatch.setenv("AIRFLOW_CONN_TRADINGVIEW_DEFAULT", "")
    assert EnvironmentVariablesBackend().get_connection("tradingview_default") is None


# ---------------------------------------------------------------- (5) loopback only


def test_every_published_port_is_bound_to_loopback(services: dict[str, Any]) -> None:
    published = {}
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        for port in service.get("ports", []):
            if isinstance(port, Mapping):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
                published[int(port["published"])] = name
            else:
                parts = str(port).split(":")
                assert len(parts) == 3 and parts[0] == "127.0.0.1", f"{name}: {port} is not 127.0.0.1:HOST:CONTAINER"
                published[int(parts[1])] = name
    assert published == {8080: "airflow-apiserver", 9092: "kafka", 9200: "elasticsearch", 5601: "kibana"}


def test_kafka_advertises_the_published_host_port(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    host_port = kafka["ports"][0].split(":")[1]
    assert f"PLAINTEXT_HOST://127.0.0.1:{host_port}" in environment(kafka)["KAFKA_ADVERTISED_LISTENERS"].split(",")


# ---------------------------------------------------------------- (6) healthchecks and start order


def test_long_running_services_have_healthchecks_and_restart(services: dict[str, Any]) -> None:
    assert ONE_SHOT <= set(services)
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service.get("restart", "no") == "no", f"{name} is one-shot and must not restart"
            assert "ports" not in service and "healthcheck" not in service, name
            continue
        check = service.get("healthcheck")
        assert check and not check.get("disable") and check.get("test"), f"{name} has no healthcheck"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert service.get("restart") == "always", name


def test_depends_on_targets_exist_with_sound_conditions(services: dict[str, Any]) -> None:
    for name, service in services.items():
        for target, condition in depends_on(service).items():
            assert target in services, f"{name} depends on undefined service {target}"
            if condition == "service_completed_successfully":
                assert target in ONE_SHOT, f"{name} waits for {target} to exit, but it runs forever"
            else:
                assert condition == "service_healthy", f"{name} → {target}: use service_healthy"
                assert "healthcheck" in services[target], f"{name} waits for {target}'s health, which it lacks"
    # No cycles: repeatedly remove services whose dependencies are all started.
    pending = {name: set(depends_on(s)) for name, s in services.items()}
    while pending:
        ready = [name for name, deps in pending.items() if not deps & pending.keys()]
        assert ready, f"dependency cycle among {sorted(pending)}"
        for name in ready:
            del pending[name]


def test_quotes_setup_waits_for_the_whole_stack(services: dict[str, Any]) -> None:
    deps = depends_on(services["quotes-setup"])
    long_running = default_profile(services) - ONE_SHOT
    assert {t for t, c in deps.items() if c == "service_healthy"} == long_running
    assert deps["airflow-init"] == "service_completed_successfully"
    assert depends_on(services["kibana"])["es-setup"] == "service_completed_successfully"


# ---------------------------------------------------------------- the stack's shape


def test_airflow_runs_local_executor_with_project_mounts(services: dict[str, Any], filled_env: dict[str, str]) -> None:
    assert not {"redis", "airflow-worker", "flower"} & default_profile(services)
    for name in AIRFLOW_SERVICES:
        service = services[name]
        env = environment(service)
        assert service["build"] == "." and service["image"] == filled_env["AIRFLOW_IMAGE_NAME"], name
        assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
        assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "false"
        assert env["AIRFLOW__EXECUTION_API__JWT_EXPIRATION_TIME"] == "86400"
        assert env["AIRFLOW__CORE__FERNET_KEY"] == filled_env["AIRFLOW_FERNET_KEY"]
        assert env["AIRFLOW__API_AUTH__JWT_SECRET"] == filled_env["AIRFLOW_JWT_SECRET"]
        assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"] == "admin:admin"
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://airflow:")
        assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].endswith("@postgres/airflow")
        assert env["QUOTEFLOW_KIBANA_DIR"] == "/opt/airflow/kibana"
        assert datetime.fromisoformat(env["QUOTEFLOW_INDEXER_START_DATE"]).tzinfo is not None
        mounts = {m.split(":")[1]: m.split(":")[0] for m in service["volumes"]}
        for folder in ("dags", "plugins", "kibana"):
            assert mounts[f"/opt/airflow/{folder}"] == f"./{folder}", f"{name} does not mount {folder}/"
            assert (ROOT / folder).is_dir()
    commands = {name: services[name].get("command") for name in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"] == "api-server" and commands["airflow-scheduler"] == "scheduler"
    assert commands["airflow-dag-processor"] == "dag-processor" and commands["airflow-triggerer"] == "triggerer"


TASK_LOG_SETTINGS = {
    "AIRFLOW__LOGGING__REMOTE_LOGGING": "true",
    "AIRFLOW__LOGGING__LOGGING_CONFIG_CLASS": "quoteflow_logging.LOGGING_CONFIG",
    "AIRFLOW__LOGGING__DELETE_LOCAL_LOGS": "false",
    "AIRFLOW__ELASTICSEARCH__WRITE_TO_ES": "true",
    "AIRFLOW__ELASTICSEARCH__JSON_FORMAT": "true",
    "AIRFLOW__ELASTICSEARCH__WRITE_STDOUT": "false",
    "AIRFLOW__ELASTICSEARCH__TARGET_INDEX": "airflow-logs",
    "AIRFLOW__ELASTICSEARCH__INDEX_PATTERNS": "airflow-logs",
    "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
}


def test_task_logs_go_to_elasticsearch_with_the_login_of_the_connection(
    services: dict[str, Any], filled_env: dict[str, str], tmp_path: Path
) -> None:
    import sys
    from urllib.parse import urlsplit

    for name in AIRFLOW_SERVICES:
        env = environment(services[name])
        assert {key: env.get(key) for key in TASK_LOG_SETTINGS} == TASK_LOG_SETTINGS, name
        host = urlsplit(env["AIRFLOW__ELASTICSEARCH__HOST"])
        assert (host.scheme, host.hostname, host.port) == ("http", "elasticsearch", 9200), name
        assert (host.username, host.password) == (None, None), f"{name}: no password in a config value"
        mounts = {m.split(":")[1]: m.split(":")[0] for m in services[name]["volumes"]}
        assert mounts["/opt/airflow/config"] == "./config", f"{name} does not mount config/ at $AIRFLOW_HOME/config"
    assert (ROOT / "config" / "quoteflow_logging.py").is_file()

    # The module accepts that configuration: Airflow (imported as in the containers) gets the provider's
    # handler writing to the compose host. Building it makes no connection.
    env = environment(services["airflow-scheduler"])
    child_env = {
        key: value
        for key, value in env.items()
        if key.startswith(("AIRFLOW__LOGGING__", "AIRFLOW__ELASTICSEARCH__"))
        or key == "AIRFLOW_CONN_ELASTICSEARCH_DEFAULT"
    }
    child_env.update(AIRFLOW_HOME=str(tmp_path), PYTHONPATH=str(ROOT / "config"), PATH="/usr/bin:/bin")
    code = (
        "import airflow, quoteflow_logging as q; io = q.REMOTE_TASK_LOG; "
        "print(type(io).__name__, io.target_index, io.write_to_es, q.LOGGING_CONFIG['handlers']['task']['class'], "
        "q.ES_KWARGS['basic_auth'][0], q.ES_KWARGS['basic_auth'][1] == q.connection_login()[1])"
    )
    run = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-6:] == [
        "ElasticsearchRemoteLogIO",
        "airflow-logs",
        "True",
        "quoteflow_logging.QuoteflowElasticsearchTaskHandler",  # the provider's handler, reading with its login
        "elastic",  # the login of elasticsearch_default, not of a config value
        "True",
    ]
    assert filled_env["ELASTIC_PASSWORD"] not in run.stdout + run.stderr


# Airflow masks these options (sensitive) in `airflow config list`; any other value must hold no login.
SENSITIVE_URL_OPTIONS = {
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
}


def test_no_config_value_holds_a_url_with_a_password(services: dict[str, Any]) -> None:
    import re

    with_login = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
    found = sorted(
        f"{name}: {key}"
        for name, service in services.items()
        for key, value in environment(service).items()
        if key.startswith("AIRFLOW__") and key not in SENSITIVE_URL_OPTIONS and with_login.search(str(value))
    )
    assert found == []
    # The check sees such a value: the URL form the task handler used before.
    assert with_login.search("http://elastic:s3cret@elasticsearch:9200")


def test_airflow_init_migrates_and_writes_the_admin_password(services: dict[str, Any], filled_env) -> None:
    init = services["airflow-init"]
    env = environment(init)
    script = init["command"][-1]
    assert script.rstrip().endswith("exec /entrypoint bash -c 'airflow db migrate && airflow version'")
    assert "_AIRFLOW_DB_MIGRATE" not in env, "the image's entrypoint ignores a failed migration requested that way"
    assert env["AIRFLOW_ADMIN_PASSWORD"] == filled_env["AIRFLOW_ADMIN_PASSWORD"]
    assert "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in script and "AIRFLOW_ADMIN_PASSWORD" in script
    assert filled_env["AIRFLOW_ADMIN_PASSWORD"] not in script, "the password must not be baked into the command"
    assert "AIRFLOW_ADMIN_PASSWORD" not in environment(services["airflow-apiserver"])


def test_celery_profile_is_redis_and_a_scalable_worker(services: dict[str, Any]) -> None:
    profiled = {name: s["profiles"] for name, s in services.items() if s.get("profiles")}
    assert profiled == dict.fromkeys(CELERY_PROFILE, ["celery"])
    for name in default_profile(services):
        # Compose refuses to start a service whose dependency is in a profile that is not enabled.
        assert not set(depends_on(services[name])) & CELERY_PROFILE, f"{name} needs the celery profile"
    worker, redis = services["airflow-worker"], services["redis"]
    assert worker["command"] == "celery worker --skip-serve-logs"
    # Scalable: nothing that two replicas would have to share or fight over.
    assert not {"container_name", "hostname", "ports"} & set(worker), "airflow-worker cannot be scaled"
    assert environment(worker)["DUMB_INIT_SETSID"] == "0"
    assert depends_on(worker) == {
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "airflow-init": "service_completed_successfully",
    }
    assert "ports" not in redis and redis["image"].startswith("redis:7")
    assert redis["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping | grep -q PONG"]


def test_celery_executor_reaches_redis_with_its_password(
    raw_compose: dict[str, Any], secure_env: dict[str, str], tmp_path: Path
) -> None:
    """With AIRFLOW_EXECUTOR=CeleryExecutor, Airflow itself (as in the worker) builds Celery's config for redis:6379."""
    import sys
    from urllib.parse import urlsplit

    services = resolve(raw_compose, {**secure_env, "AIRFLOW_EXECUTOR": "CeleryExecutor"})["services"]
    for name in AIRFLOW_SERVICES:
        assert environment(services[name])["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
    env = environment(services["airflow-worker"])
    broker = urlsplit(env["AIRFLOW__CELERY__BROKER_URL"])
    assert (broker.scheme, broker.hostname, broker.port, broker.path) == ("redis", "redis", 6379, "/0")
    assert broker.password == secure_env["REDIS_PASSWORD"] == environment(services["redis"])["REDIS_PASSWORD"]
    assert environment(services["redis"])["REDISCLI_AUTH"] == secure_env["REDIS_PASSWORD"]
    assert env["AIRFLOW__CELERY__RESULT_BACKEND"].endswith("@postgres/airflow")
    child_env = {key: value for key, value in env.items() if key.startswith("AIRFLOW__CELERY__")}
    child_env.update(AIRFLOW_HOME=str(tmp_path), PATH="/usr/bin:/bin")
    code = (
        "import os; from urllib.parse import urlsplit; "
        "from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG as c; "
        "u, b = urlsplit(c['broker_url']), urlsplit(c['result_backend']); "
        "same = u.password == urlsplit(os.environ['AIRFLOW__CELERY__BROKER_URL']).password; "
        "print(u.hostname, u.port, same, b.scheme, b.hostname, c['worker_concurrency'])"
    )
    run = subprocess.run([sys.executable, "-c", code], env=child_env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split()[-6:] == ["redis", "6379", "True", "db+postgresql", "postgres", "4"]
    assert secure_env["REDIS_PASSWORD"] not in run.stdout + run.stderr


def test_redis_gets_its_password_on_stdin(raw_compose: dict[str, Any], secure_env: dict[str, str], tmp_path) -> None:
    """The redis service's script hands its whole configuration to `redis-server -` on stdin, never as argv."""
    compose_doc = resolve(raw_compose, secure_env)
    shell, script, env = service_script(compose_doc, "redis")
    run = run_script(tmp_path, shell, script, env)
    assert run.returncode == 0, run.stderr
    (server,) = run.calls
    assert (server["name"], server["argv"]) == ("redis-server", ["-"])
    config = server["stdin"].splitlines()
    assert f"requirepass {secure_env['REDIS_PASSWORD']}" in config
    assert {"protected-mode yes", "port 6379", 'save ""', "appendonly no"} <= set(config)
    assert_no_secret_in_argv(run.calls, secure_env, secret_names(secure_env))


def test_redis_healthcheck_needs_the_password(services: dict[str, Any], tmp_path: Path) -> None:
    """The healthcheck, run against a real password-protected Redis: healthy with REDISCLI_AUTH, not without."""
    from tests.helpers.redis import redis_server

    kind, script = services["redis"]["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    with redis_server(tmp_path) as server:
        good = run_script(tmp_path, "sh", script, {"REDISCLI_AUTH": server.password}, port=server.port)
        assert good.returncode == 0, good.stderr
        assert [call["argv"] for call in good.calls] == [["ping"]]
        bad = run_script(tmp_path, "sh", script, {"REDISCLI_AUTH": "wrong"}, port=server.port)
        assert bad.returncode != 0, "a refused login must not count as healthy"


def test_kafka_is_a_single_kraft_node(services: dict[str, Any]) -> None:
    kafka = services["kafka"]
    env = environment(kafka)
    assert kafka["image"] == "apache/kafka:4.1.1"
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    factors = {k: v for k, v in env.items() if k.endswith(("REPLICATION_FACTOR", "MIN_ISR"))}
    assert len(factors) >= 5 and set(factors.values()) == {"1"}


def test_elastic_stack_is_one_version_with_security_on(services: dict[str, Any], filled_env) -> None:
    es, kibana = services["elasticsearch"], services["kibana"]
    assert es["image"] == f"docker.elastic.co/elasticsearch/elasticsearch:{STACK_VERSION}"
    assert services["es-setup"]["image"] == es["image"]
    assert kibana["image"] == f"docker.elastic.co/kibana/kibana:{STACK_VERSION}"
    es_env, kibana_env, setup_env = (environment(services[n]) for n in ("elasticsearch", "kibana", "es-setup"))
    assert es_env["xpack.security.enabled"] == "true"
    assert es_env["ELASTIC_PASSWORD"] == filled_env["ELASTIC_PASSWORD"]
    assert kibana_env["ELASTICSEARCH_USERNAME"] == "kibana_system"
    assert kibana_env["ELASTICSEARCH_PASSWORD"] == setup_env["KIBANA_PASSWORD"] == filled_env["KIBANA_PASSWORD"]
    assert kibana_env["XPACK_ENCRYPTEDSAVEDOBJECTS_ENCRYPTIONKEY"] == filled_env["KIBANA_ENCRYPTION_KEY"]
    assert "/_security/user/kibana_system/_password" in services["es-setup"]["command"][-1]


def test_quotes_setup_runs_quotes_setup_then_unpauses_the_pipeline(services: dict[str, Any]) -> None:
    script = services["quotes-setup"]["command"][-1]
    trigger = script.index("airflow dags trigger quotes_setup")
    wait = script.index("list-runs quotes_setup")
    unpause = script.index("for dag in " + " ".join(PIPELINE_DAGS))
    assert trigger < wait < unpause
    assert 'airflow dags unpause "$dag"' in script


def shell_scripts(services: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    for name, service in services.items():
        command = service.get("command")
        if isinstance(command, list) and "-c" in command:
            yield name, "bash", command[command.index("-c") + 1]
        test = (service.get("healthcheck") or {}).get("test")
        if test and test[0] == "CMD-SHELL":
            yield f"{name} healthcheck", "sh", test[1]


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_shell_scripts_parse(services: dict[str, Any]) -> None:
    scripts = list(shell_scripts(services))
    assert len(scripts) >= 6
    for name, shell, script in scripts:
        result = subprocess.run([shell, "-n", "-c", script], capture_output=True, text=True, check=False)
        assert result.returncode == 0, f"{name}: {result.stderr}"


# ---------------------------------------------------------------- (7) secrets: placeholders refused, never in argv
#
# The one-shot scripts cannot run under Docker here, so their exact text (as Compose hands it to the
# container) runs under bash with a PATH whose first folder holds recording stand-ins for the commands
# they call. The stand-in curl records its argv and stdin, then runs the real curl against a loopback
# recorder, so what curl really sends (the Authorization header, the JSON body) is checked too.

PLACEHOLDER = re.compile(r"change-?me", re.IGNORECASE)
SECRET_SUFFIXES = ("_PASSWORD", "_KEY", "_SECRET")


def secret_names(env_example: Mapping[str, str]) -> set[str]:
    """Every .env variable that holds a secret (by the names .env.example gives them)."""
    return {name for name in env_example if name.endswith(SECRET_SUFFIXES)}


@pytest.fixture(scope="module")
def secure_env(filled_env: dict[str, str]) -> dict[str, str]:
    """A .env with every placeholder replaced by a real-looking secret, as a careful user writes it."""
    import secrets

    env = dict(filled_env)
    for name in secret_names(filled_env):
        if name != "AIRFLOW_FERNET_KEY":
            env[name] = f"{name.lower().replace('_', '')}.{secrets.token_hex(12)}"
    env["KIBANA_ENCRYPTION_KEY"] = secrets.token_hex(32)
    return env


class _Recorder:
    """A loopback HTTP server that records each request (method, path, headers, body) and answers ``status``."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests: list[dict[str, Any]] = []
        self.status = 200
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append(
                    {"method": self.command, "path": self.path, "headers": dict(self.headers), "body": body}
                )
                self.send_response(recorder.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[_Recorder]:
    server = _Recorder()
    yield server
    server.close()


STAND_IN = """#!{python}
# Records its argv (and, for curl, its stdin) as one JSON line, then does what the test needs.
import json, os, subprocess, sys
name = os.path.basename(sys.argv[0])
stdin = sys.stdin.read() if name in ("curl", "redis-server") else ""
with open(os.environ["STAND_IN_LOG"], "a") as log:
    log.write(json.dumps({{"name": name, "argv": sys.argv[1:], "stdin": stdin}}) + "\\n")
if name == "curl":
    # The real curl, with every host:port sent to the loopback recorder.
    port = os.environ["STAND_IN_PORT"]
    argv = ["{curl}", "--connect-to", f"::127.0.0.1:{{port}}", *sys.argv[1:]]
    sys.exit(subprocess.run(argv, input=stdin, text=True).returncode)
if name == "python":
    os.execv("{python}", ["{python}", *sys.argv[1:]])
if name == "redis-cli":
    # The real redis-cli, sent to the test's own Redis on STAND_IN_PORT.
    os.execv("{redis_cli}", ["{redis_cli}", "-p", os.environ["STAND_IN_PORT"], *sys.argv[1:]])
if name == "chmod":
    os.execv("{chmod}", ["{chmod}", *sys.argv[1:]])
"""


@dataclass
class ScriptRun:
    returncode: int
    stderr: str
    stdout: str
    calls: list[dict[str, Any]]


def run_script(
    tmp_path: Path, shell: str, script: str, env: Mapping[str, str], recorder: _Recorder | None = None, port: int = 0
) -> ScriptRun:
    """Run ``script`` as ``shell -c`` with ``env`` only, the stand-ins first on PATH; return what they saw."""
    import sys

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    text = STAND_IN.format(
        python=sys.executable,
        curl=shutil.which("curl"),
        chmod=shutil.which("chmod"),
        redis_cli=shutil.which("redis-cli") or "/usr/bin/redis-cli",
    )
    for name in ("curl", "python", "chmod", "chown", "mkdir", "entrypoint", "redis-server", "redis-cli"):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    log.unlink(missing_ok=True)
    full_env = {
        **env,
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "STAND_IN_LOG": str(log),
        "STAND_IN_PORT": str(port or (recorder.port if recorder else 9)),
        "TMPDIR": str(tmp_path),
    }
    # The image's entrypoint lives at /entrypoint; the stand-in takes its place.
    script = script.replace("exec /entrypoint ", f"exec {bin_dir}/entrypoint ")
    result = subprocess.run(
        [shell, "-c", script], env=full_env, capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return ScriptRun(result.returncode, result.stderr, result.stdout, calls)


def service_script(compose_doc: Mapping[str, Any], name: str) -> tuple[str, str, dict[str, str]]:
    """(shell, script, container environment) of a one-shot service's ``-c`` command."""
    service = compose_doc["services"][name]
    argv = [*([service["entrypoint"]] if isinstance(service.get("entrypoint"), str) else []), *service["command"]]
    assert argv[-2] == "-c", f"{name}'s command is not `<shell> -c <script>`"
    shell = Path(argv[0]).name
    return shell, argv[-1], environment(service)


def assert_no_secret_in_argv(calls: list[dict[str, Any]], env: Mapping[str, str], names: set[str]) -> None:
    for call in calls:
        for name in names:
            value = env[name]
            assert not any(value in arg for arg in call["argv"]), f"{name} is in the argv of {call['name']}: {call}"


def test_one_shot_scripts_refuse_placeholder_secrets(
    raw_compose: dict[str, Any], filled_env: dict[str, str], tmp_path: Path
) -> None:
    """`cp .env.example .env` plus the generated keys still has change-me passwords: both scripts stop, naming them."""
    compose_doc = resolve(raw_compose, filled_env)
    placeholders = {name for name in secret_names(filled_env) if PLACEHOLDER.search(filled_env[name])}
    assert {"AIRFLOW_ADMIN_PASSWORD", "POSTGRES_PASSWORD", "ELASTIC_PASSWORD", "KIBANA_PASSWORD"} <= placeholders
    named: set[str] = set()
    for service in ("airflow-init", "es-setup"):
        shell, script, env = service_script(compose_doc, service)
        run = run_script(tmp_path, shell, script, env)
        assert run.returncode != 0, f"{service} started with placeholder secrets"
        assert run.calls == [], f"{service} ran commands before refusing: {run.calls}"
        assert f"{service}: " in run.stderr and "change-me placeholder" in run.stderr and ".env" in run.stderr
        named |= {name for name in placeholders if re.search(rf"\b{name}\b", run.stderr)}
        assert "AIRFLOW_FERNET_KEY" not in run.stderr and "AIRFLOW_JWT_SECRET" not in run.stderr, run.stderr
        for name in placeholders:
            assert filled_env[name] not in run.stderr + run.stdout, f"{service} printed the value of {name}"
    assert named == placeholders


@pytest.mark.parametrize(
    "bad", ["", "change-me", "CHANGEME-please", "my-change-me-secret", "change-me-to-32-or-more-random-characters"]
)
def test_every_secret_is_checked_by_a_one_shot_script(
    raw_compose: dict[str, Any], secure_env: dict[str, str], tmp_path: Path, recorder: _Recorder, bad: str
) -> None:
    """Each secret of .env, alone empty or a placeholder, stops airflow-init or es-setup, which name it."""
    compose_doc = resolve(raw_compose, secure_env)
    scripts = {service: service_script(compose_doc, service) for service in ("airflow-init", "es-setup")}
    for name in sorted(secret_names(secure_env)):
        stopped_by = []
        for service, (shell, script, env) in scripts.items():
            if name not in env:
                continue
            run = run_script(tmp_path, shell, script, {**env, name: bad}, recorder)
            if run.returncode != 0:
                assert re.search(rf"\b{name}\b", run.stderr), f"{service} stopped without naming {name}: {run.stderr}"
                assert run.calls == [], f"{service} ran commands before refusing {name}"
                stopped_by.append(service)
        assert stopped_by, f"a {bad!r} {name} is refused by neither airflow-init nor es-setup"


def test_airflow_init_passes_no_secret_as_an_argument(
    raw_compose: dict[str, Any], secure_env: dict[str, str], tmp_path: Path
) -> None:
    """With real secrets airflow-init writes the admin password file (0600) and hands over to the entrypoint."""
    compose_doc = resolve(raw_compose, secure_env)
    shell, script, env = service_script(compose_doc, "airflow-init")
    passwords = tmp_path / "auth" / "passwords.json"
    passwords.parent.mkdir()
    env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] = str(passwords)
    run = run_script(tmp_path, shell, script, env)
    assert run.returncode == 0, run.stderr
    assert json.loads(passwords.read_text()) == {"admin": secure_env["AIRFLOW_ADMIN_PASSWORD"]}
    assert passwords.stat().st_mode & 0o777 == 0o600
    names = [call["name"] for call in run.calls]
    assert names == ["mkdir", "python", "chmod", "chown", "entrypoint"], names
    assert run.calls[-1]["argv"] == ["bash", "-c", "airflow db migrate && airflow version"]
    assert_no_secret_in_argv(run.calls, secure_env, secret_names(secure_env))


def test_es_setup_sends_the_secrets_on_curls_stdin(
    raw_compose: dict[str, Any], secure_env: dict[str, str], tmp_path: Path, recorder: _Recorder
) -> None:
    """es-setup's curl gets the login and the new password on stdin; Elasticsearch still receives both."""
    import base64

    compose_doc = resolve(raw_compose, secure_env)
    shell, script, env = service_script(compose_doc, "es-setup")
    run = run_script(tmp_path, shell, script, env, recorder)
    assert run.returncode == 0, run.stderr
    assert "kibana_system password set" in run.stdout
    (curl,) = [call for call in run.calls if call["name"] == "curl"]
    assert_no_secret_in_argv(run.calls, secure_env, secret_names(secure_env))
    assert curl["argv"][:2] == ["-K", "-"]
    assert secure_env["ELASTIC_PASSWORD"] in curl["stdin"] and secure_env["KIBANA_PASSWORD"] in curl["stdin"]
    (request,) = recorder.requests
    assert (request["method"], request["path"]) == ("POST", "/_security/user/kibana_system/_password")
    login = base64.b64encode(f"elastic:{secure_env['ELASTIC_PASSWORD']}".encode()).decode()
    assert request["headers"]["Authorization"] == f"Basic {login}"
    assert request["headers"]["Content-Type"] == "application/json"
    assert json.loads(request["body"]) == {"password": secure_env["KIBANA_PASSWORD"]}


def test_es_setup_names_a_refused_elastic_password(
    raw_compose: dict[str, Any], secure_env: dict[str, str], tmp_path: Path, recorder: _Recorder
) -> None:
    recorder.status = 401
    shell, script, env = service_script(resolve(raw_compose, secure_env), "es-setup")
    run = run_script(tmp_path, shell, script, env, recorder)
    assert run.returncode == 1
    assert "refused ELASTIC_PASSWORD" in run.stderr and "docker compose down -v" in run.stderr
    assert len(recorder.requests) == 1, "a refused password is final, not retried"


def test_elasticsearch_healthcheck_logs_in_without_argv(
    raw_compose: dict[str, Any], secure_env: dict[str, str], tmp_path: Path, recorder: _Recorder
) -> None:
    """The healthcheck runs under the image's /bin/sh (here dash, as strict as it gets) with curl -K -."""
    import base64

    compose_doc = resolve(raw_compose, secure_env)
    service = compose_doc["services"]["elasticsearch"]
    kind, script = service["healthcheck"]["test"]
    assert kind == "CMD-SHELL"
    run = run_script(tmp_path, "sh", script, environment(service), recorder)
    assert run.returncode == 0, run.stderr
    assert_no_secret_in_argv(run.calls, secure_env, secret_names(secure_env))
    (request,) = recorder.requests
    assert request["path"] == "/_cluster/health?wait_for_status=yellow&timeout=5s"
    login = base64.b64encode(f"elastic:{secure_env['ELASTIC_PASSWORD']}".encode()).decode()
    assert request["headers"]["Authorization"] == f"Basic {login}"
    recorder.status = 408
    red = run_script(tmp_path, "sh", script, environment(service), recorder)
    assert red.returncode != 0, "a red cluster (408) must not count as healthy"


def argv_texts(service: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, text) of every string that becomes a process's argv: command, entrypoint, healthcheck test."""
    for key in ("command", "entrypoint"):
        value = service.get(key)
        for item in [value] if isinstance(value, str) else value or []:
            yield key, item
    for item in (service.get("healthcheck") or {}).get("test") or []:
        yield "healthcheck.test", item


_SHELL_VAR = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))")


def secret_argument_lines(script: str, names: set[str]) -> list[str]:
    """Lines of a shell script that expand a secret anywhere but in a here-document or a builtin printf."""
    bad = []
    heredoc_end: str | None = None
    for line in script.splitlines():
        if heredoc_end is not None:
            if line.strip() == heredoc_end:
                heredoc_end = None
            continue
        for segment in line.split("|"):
            used = {m.group("braced") or m.group("plain") for m in _SHELL_VAR.finditer(segment)} & names
            if used and not segment.strip().startswith("printf "):
                bad.append(line.strip())
        if match := re.search(r"<<-?\s*'?(\w+)'?\s*$", line):
            heredoc_end = match.group(1)
    return bad


def test_no_secret_is_ever_in_an_argv_position(
    raw_compose: dict[str, Any], secure_env: dict[str, str], env_example: dict[str, str]
) -> None:
    """Secrets reach containers as environment only: never interpolated into, or expanded as, an argument."""
    names = secret_names(env_example)
    compose_doc = resolve(raw_compose, secure_env)
    checked = 0
    for name, raw_service in raw_compose["services"].items():
        for where, text in argv_texts(raw_service):
            interpolated = referenced_variables(text) & names
            assert not interpolated, f"{name} {where} has Compose put {sorted(interpolated)} into an argument"
        for where, text in argv_texts(compose_doc["services"][name]):
            checked += 1
            leaked = [n for n in names if secure_env[n] in text]
            assert not leaked, f"{name} {where} carries the value of {leaked}"
            assert secret_argument_lines(text, names) == [], f"{name} {where} passes a secret as an argument"
    assert checked >= 10


def test_the_argv_check_catches_a_secret_argument() -> None:
    names = {"ELASTIC_PASSWORD"}
    assert secret_argument_lines('curl -u "elastic:${ELASTIC_PASSWORD}" http://x', names)
    assert secret_argument_lines("echo x | curl -d $ELASTIC_PASSWORD http://x", names)
    assert not secret_argument_lines('printf "%s" "$ELASTIC_PASSWORD" | curl -K - http://x', names)
    assert not secret_argument_lines('curl -K - http://x <<EOF\nuser = "e:${ELASTIC_PASSWORD}"\nEOF\n', names)
    assert secret_argument_lines('curl -K - <<EOF\nx\nEOF\ncurl -u "$ELASTIC_PASSWORD"', names)
