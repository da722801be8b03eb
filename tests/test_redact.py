"""sweeplab.redact: no password or secret value survives redact(), mask_config() or a log file, and what
is not secret (user, host, port, path; the config's other values) does."""

from __future__ import annotations

import logging
import logging.config
import re
from urllib.parse import quote, unquote

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from sweeplab.redact import (
    MASK,
    MIN_FOUND_SECRET,
    RedactingFilter,
    install_log_redaction,
    mask_config,
    redact,
    secret_env_var,
    secret_values,
    strip_credentials,
    uninstall_log_redaction,
    uri_secrets,
)

from support import ROOT

SCHEMES = ["http", "https", "postgresql", "postgresql+psycopg", "postgresql+psycopg2", "mysql", "mysql+pymysql"]
SCHEMES += ["mssql", "mssql+pyodbc", "redis"]
# Passwords: any printable character a URI can hold, '@', ':', '/', '%' included (not '*', the mask's
# own character, which could form the password across the mask's edge).
PASSWORD_CHARS = st.characters(
    min_codepoint=33, max_codepoint=0x2FF, blacklist_characters='"`<>*', blacklist_categories=("Cc", "Cs", "Zs")
)
NAME = st.text("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", min_size=1, max_size=12)


@st.composite
def passwords(draw, min_size=MIN_FOUND_SECRET):
    raw = draw(st.text(PASSWORD_CHARS, min_size=min_size, max_size=24))
    # "12/x" after user: reads as a port and a path; "p@ss/x": the password "p" and the host "ss"
    # (both documented, as URIs are read); percent-encoded they are found.
    if re.match(r"\d+[/?#]", raw) or re.search(r"@.*[/?#]", raw) or draw(st.booleans()):
        return quote(raw, safe="")
    return raw


@st.composite
def uris(draw, min_password=MIN_FOUND_SECRET):
    parts = {
        "scheme": draw(st.sampled_from(SCHEMES)) + "://",
        "user": draw(st.one_of(st.just(""), NAME)),
        "password": draw(passwords(min_password)),
        "host": draw(st.one_of(NAME.map(str.lower), st.just("127.0.0.1"), st.just("db-host.example.org"))),
        "port": draw(st.one_of(st.just(""), st.integers(1, 65535).map(lambda p: f":{p}"))),
        "path": draw(st.one_of(st.just(""), st.lists(NAME, max_size=3).map(lambda s: "/" + "/".join(s)))),
        "query": draw(st.sampled_from(["", "?sslmode=require", "?a=1&b=two"])),
    }
    p = parts
    parts["uri"] = f"{p['scheme']}{p['user']}:{p['password']}@{p['host']}{p['port']}{p['path']}{p['query']}"
    return parts


CONTEXTS = [
    "{}",
    "connecting to {} now",
    "'{}'",
    '"{}"',
    "tracking:\n  uri: {}\n  experiment: cifar10\n",
    "tracking:\n  uri: '{}'\n",
    '{{"uri": "{}", "email": "someone@example.org"}}',
    "error: MLflow server {} is not reachable (5 s probe)",
    "--backend-store-uri {} --serve-artifacts",
]


@settings(max_examples=400, deadline=None)
@given(uris(), st.sampled_from(CONTEXTS), st.text(max_size=30))
def test_redact_never_leaves_the_password_and_keeps_the_rest(uri, context, noise):
    pw, decoded = uri["password"], unquote(uri["password"])
    text = noise + " " + context.format(uri["uri"]) + " " + noise
    out = redact(text)
    assert pw not in out
    if len(decoded) >= MIN_FOUND_SECRET:
        assert decoded not in out
    assert redact(out) == out  # idempotent
    kept = [uri["user"], uri["host"], uri["port"], uri["path"], uri["query"], noise]
    assume(not any(form in part for part in kept for form in (pw, decoded)))
    p = uri
    assert f"{p['scheme']}{p['user']}:{MASK}@{p['host']}{p['port']}{p['path']}{p['query']}" in out
    assert out.startswith(noise + " ") and out.endswith(" " + noise)


@settings(max_examples=200, deadline=None)
@given(uris(min_password=1))
def test_uri_secrets_and_strip_credentials(uri):
    pw = uri["password"]
    assert uri_secrets(uri["uri"])[0] == pw and unquote(pw) in uri_secrets(uri["uri"])
    stripped = strip_credentials(uri["uri"])
    p = uri
    user = f"{p['user']}@" if p["user"] else ""
    assert stripped == f"{p['scheme']}{user}{p['host']}{p['port']}{p['path']}{p['query']}"
    assert uri_secrets(stripped) == []
    out = redact(uri["uri"])
    assert uri_secrets(out) == []  # the mask is all that is left in the password's place
    if not any(form in p["user"] + p["host"] for form in (pw, unquote(pw))):  # else masked there too
        assert out.startswith(f"{p['scheme']}{p['user']}:{MASK}@{p['host']}")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(PASSWORD_CHARS, min_size=1, max_size=16), min_size=1, max_size=4), st.text(max_size=40))
def test_every_literal_secret_is_masked_longer_first(secrets, filler):
    text = filler.join([*secrets, *reversed(secrets), ""])
    out = redact(text, secrets)
    for secret in secrets:
        assert secret not in out or secret in MASK * 4  # a secret of '*' may be the mask's own characters


@pytest.mark.parametrize(
    "text, expected",
    [
        ("postgresql://mlflow:s3cret@db-host:5432/mlflow", "postgresql://mlflow:***@db-host:5432/mlflow"),
        ("uri: 'postgresql+psycopg://u:p%40ss@h/db' (p@ss)", "uri: 'postgresql+psycopg://u:***@h/db' (***)"),
        ("mysql://root:pa/ss@localhost/db", "mysql://root:***@localhost/db"),  # SQLAlchemy's reading
        ("postgresql://u:p@ss@host/db?x=a@b", "postgresql://u:***@host/db?x=a@b"),
        ('{"uri": "http://u:pw12@h", "email": "x@y"}', '{"uri": "http://u:***@h", "email": "x@y"}'),
        ("redis://:hunter22@localhost:6379/0", "redis://:***@localhost:6379/0"),
        (
            "postgresql://h/db?user=u&password=abcd&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("https://user:pw@[::1]:8080/x", "https://user:***@[::1]:8080/x"),
        ("mssql+pyodbc://sa:Pa55:word@h/db?driver=x", "mssql+pyodbc://sa:***@h/db?driver=x"),
        # not secrets:
        ("http://host:8080/a@b", "http://host:8080/a@b"),
        ("http://[::1]:8080/@x", "http://[::1]:8080/@x"),
        ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
        ("mail me: user@example.org, ratio 1:2@3", "mail me: user@example.org, ratio 1:2@3"),
        ("${oc.env:MLFLOW_TRACKING_URI,null}", "${oc.env:MLFLOW_TRACKING_URI,null}"),
    ],
)
def test_redact_examples(text, expected):
    assert redact(text) == expected


def test_strip_credentials_drops_credential_query_parameters():
    assert strip_credentials("postgresql://h/db?password=x&sslmode=require") == "postgresql://h/db?sslmode=require"
    assert strip_credentials("postgresql://h/db?sslmode=require&password=x") == "postgresql://h/db?sslmode=require"
    assert strip_credentials("postgresql://h/db?password=x&token=y") == "postgresql://h/db"
    assert strip_credentials("see https://h/x?token=abc#top") == "see https://h/x#top"
    assert strip_credentials("is it? yes") == "is it? yes"


# -- configs ------------------------------------------------------------------------------------
def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def test_secret_env_var_names():
    assert secret_env_var("data.token") == "SWEEPLAB_SECRET_DATA_TOKEN"
    assert secret_env_var("hydra.launcher.api-key") == "SWEEPLAB_SECRET_HYDRA_LAUNCHER_API_KEY"


def test_mask_config_composes_and_resolves_back_to_the_original(tmp_path, monkeypatch):
    from hydra import compose, initialize_config_dir

    uri = "postgresql+psycopg://mlflow:Sup3r%2Fsecret@db-host:5432/mlflow"
    cfg = _compose(f"tracking.uri={uri}", "+data.token=tok-0123456789", "+data.mirrors=[https://u:mirrorpw@m/x]")
    keys = ["data.token"]
    assert set(secret_values(cfg, keys)) == {"tok-0123456789", "Sup3r%2Fsecret", "Sup3r/secret", "mirrorpw"}

    masked = mask_config(cfg, keys)
    assert cfg.data.token == "tok-0123456789" and cfg.tracking.uri == uri  # the original is untouched
    text = OmegaConf.to_yaml(masked)
    for secret in secret_values(cfg, keys):
        assert secret not in text
    assert masked.tracking.uri == "postgresql+psycopg://mlflow@db-host:5432/mlflow"
    assert OmegaConf.to_yaml(masked.data, resolve=False).count("${oc.env:SWEEPLAB_SECRET_DATA_TOKEN}") == 1

    # Saved and composed again, as a rerun from the run's config/ folder does, with the variable set.
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(masked))
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        rerun = compose("config")
    monkeypatch.setenv("SWEEPLAB_SECRET_DATA_TOKEN", "tok-0123456789")
    expected = OmegaConf.to_container(cfg, resolve=True)
    expected["tracking"]["uri"] = "postgresql+psycopg://mlflow@db-host:5432/mlflow"
    expected["data"]["mirrors"] = ["https://u@m/x"]
    assert OmegaConf.to_container(rerun, resolve=True) == expected
    assert secret_values(rerun, keys) == ["tok-0123456789"]  # the variable's value is still a secret


def test_mask_config_masks_hydras_record_of_the_command_line():
    from hydra import compose, initialize_config_dir

    overrides = ["tracking.uri=http://alice:wonderland1@mlflow-host:5000", "+data.token=tok-0123456789"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    assert "tok-0123456789" in str(cfg.hydra.overrides.task)
    masked = mask_config(cfg, ["data.token"])
    text = OmegaConf.to_yaml(masked)
    assert "tok-0123456789" not in text and "wonderland1" not in text
    assert list(masked.hydra.overrides.task) == ["tracking.uri=http://alice@mlflow-host:5000", "+data.token=***"]
    raw = OmegaConf.to_container(cfg, resolve=False)
    raw["tracking"]["uri"] = "http://alice@mlflow-host:5000"
    raw["data"]["token"] = "${oc.env:SWEEPLAB_SECRET_DATA_TOKEN}"
    raw["hydra"]["overrides"]["task"] = list(masked.hydra.overrides.task)
    raw["hydra"]["job"]["override_dirname"] = masked.hydra.job.override_dirname
    assert OmegaConf.to_container(masked, resolve=False) == raw  # the rest as it was
    assert "wonderland1" not in masked.hydra.job.override_dirname


def test_mask_config_keeps_interpolations_and_finds_what_they_resolve_to(monkeypatch):
    cfg = _compose("+data.token=${oc.env:DATA_TOKEN}")
    assert cfg.tracking._get_node("uri")._value() == "${oc.env:MLFLOW_TRACKING_URI,null}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:wonderland1@mlflow-host:5000")
    monkeypatch.setenv("DATA_TOKEN", "from-the-env-42")
    assert secret_values(cfg, ["data.token"]) == ["from-the-env-42", "wonderland1"]
    masked = mask_config(cfg, ["data.token"])
    assert OmegaConf.to_yaml(masked) == OmegaConf.to_yaml(cfg)  # nothing to mask: no literal secret
    # On the resolved config the same values are literals, and are masked.
    resolved = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    masked = mask_config(resolved, ["data.token"])
    assert masked.tracking.uri == "http://alice@mlflow-host:5000"
    assert masked.data._get_node("token")._value() == "${oc.env:SWEEPLAB_SECRET_DATA_TOKEN}"
    assert "wonderland1" not in OmegaConf.to_yaml(masked) and "from-the-env-42" not in OmegaConf.to_yaml(masked)


def test_mask_config_handles_groups_lists_missing_and_unknown_keys():
    cfg = OmegaConf.create(
        {
            "creds": {"user": "bob", "key": "k-987654"},
            "uris": ["mysql://r:abcd1234@h/db", {"nested": "see https://x:efgh5678@h2/p"}],
            "todo": "???",
            "n": 3,
        }
    )
    keys = ["creds", "nowhere.at_all", "todo"]
    assert set(secret_values(cfg, keys)) == {"bob", "k-987654", "abcd1234", "efgh5678"}
    masked = mask_config(cfg, keys)
    raw = OmegaConf.to_container(masked, resolve=False)
    assert raw["creds"] == {
        "user": "${oc.env:SWEEPLAB_SECRET_CREDS_USER}",
        "key": "${oc.env:SWEEPLAB_SECRET_CREDS_KEY}",
    }
    assert raw["uris"] == ["mysql://r@h/db", {"nested": "see https://x@h2/p"}]
    assert raw["todo"] == "???" and raw["n"] == 3


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(  # no "${" in a value: OmegaConf reads that as an interpolation (a literal one needs escaping)
    st.dictionaries(
        NAME.filter(lambda k: "." not in k),
        uris().map(lambda u: u["uri"]).filter(lambda u: "${" not in u),
        min_size=1,
        max_size=4,
    ),
    st.text(PASSWORD_CHARS, min_size=MIN_FOUND_SECRET, max_size=20).filter(lambda t: "${" not in t),
)
def test_mask_config_leaves_no_secret_in_generated_configs(monkeypatch, values, token):
    cfg = OmegaConf.create({"store": values, "auth": {"token": token}})
    secrets = secret_values(cfg, ["auth.token"])
    assert token in secrets
    masked = mask_config(cfg, ["auth.token"])
    text = OmegaConf.to_yaml(masked)
    for uri in values.values():
        for secret in uri_secrets(uri):
            assert f":{secret}@" not in text
    assert all(not uri_secrets(v) for v in masked.store.values())
    monkeypatch.setenv("SWEEPLAB_SECRET_AUTH_TOKEN", token)
    assert masked.auth.token == token


# -- logs ---------------------------------------------------------------------------------------
@pytest.fixture
def root_logging():
    """A real logging setup on the root logger, restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogRecordFactory())
    yield root
    uninstall_log_redaction()
    for handler in root.handlers[:]:
        if handler not in saved[0]:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(saved[1])
    logging.setLogRecordFactory(saved[2])


def test_log_filter_masks_a_log_file(tmp_path, root_logging, monkeypatch):
    token, uri = "tok-0123456789", "postgresql://mlflow:Sup3rsecret@db-host:5432/mlflow"
    first = logging.FileHandler(tmp_path / "before.log")
    first.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s %(uri)s", defaults={"uri": ""}))
    root_logging.addHandler(first)
    root_logging.setLevel(logging.INFO)
    install_log_redaction([token])
    log = logging.getLogger("sweeplab.some.module")

    log.info("store %s, token %s", uri, token)
    log.info({"token": token, "uri": uri})  # a non-string message
    try:
        raise RuntimeError(f"cannot connect to {uri} with {token}")
    except RuntimeError:
        log.exception("failed")
    log.warning("stack", stack_info=True, extra={"uri": uri})

    # Hydra configures logging after the app starts: dictConfig replaces the root's handlers.
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"simple": {"format": "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"}},
            "handlers": {
                "file": {"class": "logging.FileHandler", "filename": str(tmp_path / "after.log"), "formatter": "simple"}
            },
            "root": {"level": "INFO", "handlers": ["file"]},
        }
    )
    logging.getLogger("sweeplab.training").info("MLflow run abc (%s), token=%s", uri, token)
    # MLflow's loggers may not propagate (its own logging setup, once mlflow is imported): here they do,
    # so the record reaches the file; redacted it is either way, when it is made.
    monkeypatch.setattr(logging.getLogger("mlflow"), "propagate", True)
    logging.getLogger("mlflow.store").error("failed: %r", {"url": uri})
    for handler in logging.getLogger().handlers:
        handler.flush()

    before, after = (tmp_path / "before.log").read_text(), (tmp_path / "after.log").read_text()
    for text in (before, after):
        assert "Sup3rsecret" not in text and token not in text
    assert "INFO sweeplab.some.module: store postgresql://mlflow:***@db-host:5432/mlflow, token ***" in before
    assert "RuntimeError: cannot connect to postgresql://mlflow:***@db-host:5432/mlflow with ***" in before
    assert "Traceback" in before and "Stack (most recent call last)" in before
    assert "WARNING sweeplab.some.module: stack postgresql://mlflow:***@db-host:5432/mlflow" in before  # extra=
    assert "MLflow run abc (postgresql://mlflow:***@db-host:5432/mlflow), token=***" in after
    assert "'url': 'postgresql://mlflow:***@db-host:5432/mlflow'" in after


def test_redacting_filter_alone_on_a_handler(tmp_path, root_logging):
    handler = logging.FileHandler(tmp_path / "x.log")
    handler.addFilter(RedactingFilter(["abc-secret-1"]))
    log = logging.getLogger("sweeplab.alone")
    log.addHandler(handler)
    try:
        log.warning("value %s and %s", "abc-secret-1", "http://u:pass9876@h:1/p")
        log.warning("broken %d", "not a number")  # a bad format string still gets logged, masked
    finally:
        log.removeHandler(handler)
        handler.close()
    text = (tmp_path / "x.log").read_text()
    assert text.splitlines()[0] == "value *** and http://u:***@h:1/p"
    assert "abc-secret-1" not in text and "pass9876" not in text


def test_install_twice_adds_secrets_to_one_filter(root_logging):
    first = install_log_redaction(["one-secret"])
    second = install_log_redaction(["two-secret"])
    assert first is second and set(first.secrets) == {"one-secret", "two-secret"}
    record = logging.getLogger("x").makeRecord(
        "x", logging.INFO, __file__, 1, "%s %s", ("one-secret", "two-secret"), None
    )
    assert record.getMessage() == "*** ***"
