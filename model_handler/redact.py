"""Keep credentials that ride in storage URIs out of logs, status, Events and termination messages.

fsspec URIs may carry secrets: user info (`s3://KEY:SECRET@bucket/prefix`,
`https://user:password@host/...`) and query parameters (presigned or SAS URLs:
`?X-Amz-Signature=...`, `?sig=...`, `?token=...`). `redact` replaces them in any text with `***`:
the whole user info of every URI, and the value of every query parameter whose name looks secret
(token, secret, sig/signature, password, key, credential, auth, session). Everything else (scheme,
host, path, harmless parameters such as `customized=true`) stays, so messages still say where.

The operator installs `install_log_redaction()` at start, so every log record of the process (its
own, Kopf's, the Kubernetes client's) is redacted before any handler sees it; Kopf turns log records
into Events, so that covers those Events too. Storage errors are redacted where they are raised
(`model_handler.registry`), so pods, Jobs and the operator never put a credential into a message.
"""
from __future__ import annotations

import logging
import re

MASK = "***"
# scheme://userinfo@ : everything between "://" and the next "@" in the same word. "/" is allowed
# because cloud secret keys contain it and people paste them unescaped (a path with an "@" in it
# is then masked too: over-redaction is the safe side).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^@\s'\"<>]+)@")
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:[A-Za-z0-9_.-]*?)(?:token|secret|sig|signature|passw(?:or)?d|pwd|key|credential|auth|"
    r"session|sas)[A-Za-z0-9_.-]*=)(?P<value>[^&;#\s'\"<>]+)", re.IGNORECASE)


def redact(text: str) -> str:
    """`text` with URI credentials (user info, secret-looking query values) replaced by `***`."""
    if not text or ("://" not in text and "=" not in text):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    return _SECRET_PARAM.sub(lambda m: f"{m['name']}{MASK}", text)


def redact_uri(uri: str) -> str:
    """A storage URI fit for messages (same as `redact`, named for the call sites' intent)."""
    return redact(uri)


_installed = False


def install_log_redaction() -> None:
    """Redact every log record created from now on in this process (idempotent).

    A record factory runs once per record, before filters and handlers, so every handler (stderr,
    Kopf's Event poster, JSON formatters) sees the redacted message and traceback."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler to report, as logging does
            return record
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, ()
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
