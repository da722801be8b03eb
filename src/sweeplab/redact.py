"""Find and mask secrets, so that nothing a run writes (MLflow params and artifacts, console logs)
holds a password or a token. Pure: text and configs in, text and configs out.

- ``redact(text, secrets)``: the text with every secret replaced by ``***``: the password of any
  URI with credentials (``postgresql://user:***@host/db``), credential query parameters
  (``?password=***``), and the given literal values.
- ``uri_secrets(uri)``: the secrets a URI carries, as written and percent-decoded.
- ``secret_values(cfg, secret_keys)``: every secret literal of a composed config.
- ``mask_config(cfg, secret_keys)``: a copy of a config that still reruns but holds no secret.
- ``RedactingFilter`` / ``install_log_redaction(secrets)``: the same for log records.

What counts as a URI password: in ``scheme://user:password@host``, what follows the first ``:``
after ``//`` up to the authority's last ``@`` (as ``urllib.parse.urlsplit`` reads it; the
authority ends at ``/``, ``?``, ``#`` or whitespace). When the authority holds no ``@`` but a ``@``
follows further on before whitespace or a double quote (``postgresql://u:pa/ss@host``: SQLAlchemy
reads the password ``pa/ss``), the text up to that ``@`` is masked too, unless it starts as a port
does (digits, then ``/``, ``?``, ``#`` or the end): ``http://host:8080/a@b`` is a port and a path.
Not recognized: a password that holds whitespace, ``"``, a backtick, ``<`` or ``>`` unencoded
(a URI may not hold them; percent-encoded they are found), and URIs that are percent-encoded whole.
Read as the RFC reads it, so partly missed: a password with an unencoded ``@`` followed later by
``/``, ``?`` or ``#`` (``u:p@ss/word@host``: the password is ``p``, the host ``ss``, as urllib and
SQLAlchemy read it too). Such passwords must be percent-encoded in a URI anyway.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

from omegaconf import DictConfig, ListConfig, OmegaConf, read_write

MASK = "***"
ENV_PREFIX = "SWEEPLAB_SECRET_"
# A password this short that a URI in a text carries is masked in that URI only, not wherever
# else the same characters occur in the text (which would shred a log line to hide one letter).
MIN_FOUND_SECRET = 4

_URI = re.compile(
    r"""(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)
        (?P<user>[^\s:/?\#@\[\]'"`<>]*):
        (?:
            (?P<pw>[^\s/?\#"`<>]*)@                               # the authority's last '@'
          | (?!\d+(?:[\s/?\#'"`<>]|$))(?P<pw2>[^\s"`<>]*)@         # SQLAlchemy: up to a later '@'
        )""",
    re.VERBOSE,
)
# Query parameters that carry credentials (libpq's password=, API tokens, ...).
_QUERY_KEYS = "password|passwd|pwd|secret|token|access_token|api_key|apikey"
_QUERY = re.compile(rf"(?P<sep>[?&;])(?P<key>(?:{_QUERY_KEYS}))=(?P<value>[^&;#\s'\"`]*)", re.IGNORECASE)


def _password(m: re.Match) -> str:
    return m.group("pw") if m.group("pw") is not None else m.group("pw2")


def _found(text: str) -> list[str]:
    """The secrets the URIs in ``text`` carry: passwords and credential query values, as written."""
    found = [_password(m) for m in _URI.finditer(text)]
    found += [m.group("value") for m in _QUERY.finditer(text)]
    return [s for s in found if s and s != MASK]


def uri_secrets(uri: str) -> list[str]:
    """The password of ``uri`` (and of any other URI in the string), as written and percent-decoded,
    and the values of credential query parameters (``password=``, ``token=``, ...); [] if none."""
    out: list[str] = []
    for secret in _found(str(uri)):
        for form in (secret, unquote(secret)):
            if form and form not in out:
                out.append(form)
    return out


def _literal_pattern(secrets: Iterable[str]) -> re.Pattern | None:
    unique = sorted({str(s) for s in secrets if s is not None and str(s)}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, unique))) if unique else None  # longer first


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` with every secret replaced by ``***``.

    Masked: the password of every URI with credentials (``scheme://user:***@host...``: the user,
    host, port and path stay), credential query parameters (``?password=***``), every value in
    ``secrets`` (longer ones first, so a secret that contains another is masked whole), and, where
    else they occur in the text, the passwords found in its URIs, as written and percent-decoded
    (``p%40ss`` and ``p@ss``; those of at least MIN_FOUND_SECRET characters).
    """
    text = str(text)
    found = [s for s in uri_secrets(text) if len(s) >= MIN_FOUND_SECRET]
    text = _URI.sub(lambda m: f"{m.group('scheme')}{m.group('user')}:{MASK}@", text)
    text = _QUERY.sub(lambda m: f"{m.group('sep')}{m.group('key')}={MASK}", text)
    pattern = _literal_pattern([*secrets, *found])
    return pattern.sub(MASK, text) if pattern else text


def strip_credentials(text: str) -> str:
    """``text`` with the password taken out of each URI (``scheme://user@host``; ``scheme://host``
    when there is no user) and credential query parameters removed. The client then takes the
    password from its own place: MLFLOW_TRACKING_PASSWORD for an MLflow server, PGPASSWORD or
    ~/.pgpass for PostgreSQL, MySQL's option files, ..."""

    def query(m: re.Match) -> str:  # "?\0" marks a query whose first parameter went
        return "?\0" if m.group("sep") == "?" else ""

    text = _URI.sub(lambda m: m.group("scheme") + (f"{m.group('user')}@" if m.group("user") else ""), str(text))
    text = _QUERY.sub(query, text)
    return re.sub(r"\?\0(?:[&;]|)", lambda m: "?" if len(m.group()) > 2 else "", text)


# -- configs ------------------------------------------------------------------------------------
def secret_env_var(key: str) -> str:
    """The variable a masked config reads the value of secret key ``key`` from:
    ``data.token`` -> ``SWEEPLAB_SECRET_DATA_TOKEN``."""
    return ENV_PREFIX + re.sub(r"[^A-Za-z0-9]+", "_", key).strip("_").upper()


_UNRESOLVED = object()


def _leaves(cfg, path=()):
    """(path, raw value, resolved value or _UNRESOLVED, is an interpolation) of every leaf of ``cfg``,
    interpolations kept as written in the raw value."""
    written = OmegaConf.to_container(cfg, resolve=False)
    for key in written.keys() if isinstance(written, dict) else range(len(written)):
        interpolation = OmegaConf.is_interpolation(cfg, key)
        raw = None if OmegaConf.is_missing(cfg, key) else written[key]
        if isinstance(raw, (dict, list)) and not interpolation:
            yield from _leaves(cfg[key], (*path, key))
            continue
        try:
            resolved = cfg[key]
        except Exception:  # an interpolation that cannot be resolved here (${hydra:...}, a missing variable)
            resolved = _UNRESOLVED
        if isinstance(resolved, (DictConfig, ListConfig)):
            resolved = OmegaConf.to_container(resolved, resolve=False)
        yield (*path, key), raw, resolved, interpolation


def _scalars(value) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _scalars(v)]
    if isinstance(value, list):
        return [s for v in value for s in _scalars(v)]
    return [] if value is None or value is _UNRESOLVED else [str(value)]


def _dotted(path) -> str:
    return ".".join(str(k) for k in path)


def _listed(path, keys) -> bool:
    dotted = _dotted(path)
    return any(dotted == k or dotted.startswith(k + ".") for k in keys)


def _literals(raw, resolved, interpolation: bool) -> list[str]:
    """A listed key's secret texts: its value as written (unless an interpolation) and as resolved."""
    texts = [] if interpolation else _scalars(raw)
    return [t for t in texts + _scalars(resolved) if t]


def secret_values(cfg: DictConfig, secret_keys: Iterable[str] = ()) -> list[str]:
    """Every secret literal of a composed config, for ``redact`` and ``install_log_redaction``:
    the passwords of URIs with credentials in any string value (as written and as its
    interpolations resolve: ``${oc.env:MLFLOW_TRACKING_URI,null}`` may hold one), and the values
    of the dotted keys in ``secret_keys`` (e.g. ``tracking.secret_keys: [data.token]``; a key
    that names a group gives all its values). Longer first."""
    keys = set(secret_keys or ())
    out: set[str] = set()
    for path, raw, resolved, interpolation in _leaves(cfg):
        for text in _scalars(raw) + _scalars(resolved):
            out.update(uri_secrets(text))
        if _listed(path, keys):
            out.update(_literals(raw, resolved, interpolation))
    return sorted(out, key=lambda s: (-len(s), s))


def mask_config(cfg: DictConfig, secret_keys: Iterable[str] = ()) -> DictConfig:
    """A copy of ``cfg`` that holds no secret and still reruns, for saving with a run.

    - A URI with a password, in any string value, loses the password and keeps the user
      (``postgresql://mlflow:pw@db/mlflow`` -> ``postgresql://mlflow@db/mlflow``); credential query
      parameters (``password=``, ``token=``, ...) are dropped. A rerun reads the password where
      its client looks for one: MLFLOW_TRACKING_PASSWORD, PGPASSWORD or ~/.pgpass, ...
    - The value of each dotted key in ``secret_keys`` becomes ``${oc.env:SWEEPLAB_SECRET_<KEY>}``,
      the key in capitals with every run of other characters an underscore (``data.token`` ->
      ``SWEEPLAB_SECRET_DATA_TOKEN``, see ``secret_env_var``): set that variable to rerun. A key
      that names a group masks each of its values under its own name; a key not in the config
      is ignored.
    - Interpolations are kept as written (``${oc.env:MLFLOW_TRACKING_URI,null}`` holds no secret),
      except that a URI written inside one (a default value) loses its password as above.
    - Any other string that holds one of the secrets (``secret_values``) has it replaced by ``***``:
      Hydra's record of the command line (``hydra.overrides.task``, ``hydra.job.override_dirname``)
      repeats ``data.token=...``. (A URI's password found this way counts from MIN_FOUND_SECRET
      characters on, as in ``redact``.)

    Works on the config as composed (unresolved) and on a resolved one alike.
    """
    keys = set(secret_keys or ())
    listed = {
        text
        for path, raw, resolved, interpolation in _leaves(cfg)
        if _listed(path, keys)
        for text in _literals(raw, resolved, interpolation)
    }
    found = [s for s in secret_values(cfg) if len(s) >= MIN_FOUND_SECRET]
    pattern = _literal_pattern([*listed, *found])
    masked = copy.deepcopy(cfg)
    with read_write(masked):
        for path, raw, _, interpolation in list(_leaves(masked)):
            value = raw
            if _listed(path, keys):
                if raw is not None and not interpolation:
                    value = f"${{oc.env:{secret_env_var(_dotted(path))}}}"
            elif isinstance(raw, str):
                value = strip_credentials(raw) if uri_secrets(raw) else raw
                value = pattern.sub(MASK, value) if pattern else value
                value = raw if value == raw else value
            if value is not raw:
                parent = masked
                for k in path[:-1]:
                    parent = parent[k]
                parent[path[-1]] = value
    return masked


# -- logs ---------------------------------------------------------------------------------------
_RECORD_ATTRS = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Masks secrets in a log record: its message formatted with its args, its exception text, its
    stack text and any string it got through ``extra=``, with ``redact(..., secrets)``. The record
    keeps no args afterwards (the message is final), so any handler or formatter after it sees only
    masked text."""

    def __init__(self, secrets: Iterable[str] = ()):
        super().__init__()
        self.secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        self.secrets = sorted({*self.secrets, *(str(s) for s in secrets if s)}, key=len, reverse=True)

    def redact_record(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: logging reports it later, with the raw parts
            message = f"{record.msg} {record.args!r}"
        record.msg, record.args = redact(message, self.secrets), ()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text, self.secrets)
        if record.stack_info:
            record.stack_info = redact(record.stack_info, self.secrets)
        for name, value in list(record.__dict__.items()):
            if name not in _RECORD_ATTRS and isinstance(value, str):
                setattr(record, name, redact(value, self.secrets))

    def filter(self, record: logging.LogRecord) -> bool:
        self.redact_record(record)
        return True


_installed: dict = {}


def install_log_redaction(secrets: Iterable[str] = ()) -> RedactingFilter:
    """Mask secrets (and URI passwords) in every log record of this process; return the filter.

    Two layers, since a filter on a logger only sees the records logged on that very logger (not
    those its children propagate to its handlers), and Hydra or a library may add handlers later:
    - a log record factory that redacts each record as it is made, whichever logger makes it and
      whichever handler (present or future) writes it;
    - the filter on the root logger's handlers present now, for records made by a factory set
      after this one (logging keeps one factory; one set later replaces ours).

    Calling it again adds the new secrets to the same filter. Not covered: strings passed with
    ``extra=`` to handlers added after this call (logging sets them after the factory ran), handlers
    set on other loggers after a later factory replaced ours, and text written to stdout/stderr
    without ``logging`` (``print``, tracebacks of uncaught exceptions).
    """
    filt = _installed.get("filter")
    if filt is None:
        filt = RedactingFilter()
        previous = logging.getLogRecordFactory()

        def factory(*args, **kwargs):
            record = previous(*args, **kwargs)
            filt.redact_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed.update(filter=filt, previous=previous, factory=factory)
    filt.add(secrets)
    for handler in logging.getLogger().handlers:
        if filt not in handler.filters:
            handler.addFilter(filt)
    return filt


def uninstall_log_redaction() -> None:
    """Undo ``install_log_redaction`` (for tests): the previous record factory, no filters."""
    filt = _installed.pop("filter", None)
    if filt is None:
        return
    if logging.getLogRecordFactory() is _installed.get("factory"):
        logging.setLogRecordFactory(_installed["previous"])
    _installed.clear()
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in getattr(logger, "handlers", []):
            handler.removeFilter(filt)
