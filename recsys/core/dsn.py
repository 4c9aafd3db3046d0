"""PostgreSQL URLs (DSNs): the one way to connect to one, and the one way to show one without its password.

Three commands read PostgreSQL (``ab-report``, ``feedback export``, ``train --data postgresql://…``); each had its
own copy of the connect-error handling, and each missed a case (a port that is not a number is a ValueError from
asyncpg's parser). :func:`connect` turns every way a connection can fail into a one-line
:class:`~recsys.core.errors.ConfigError` (the URL cannot be used) or :class:`~recsys.core.errors.DataError` (the
server cannot be reached or refuses), with the password removed. :func:`redact` is what any message, log line or
recorded file shows of a URL (``metrics.json`` is copied into the model repository, S3 on EKS).

``serving/`` (inside Triton) may not import this package and keeps its own reconnect loop.
"""

from __future__ import annotations

import re
from urllib.parse import unquote, unquote_plus

import asyncpg

from recsys.core.errors import ConfigError, DataError

HIDDEN = "***"
#: Query-string or keyword parameters whose value is a secret: password, sslpassword, and the like.
_SECRET_KEY = re.compile(r"password|secret|token", re.IGNORECASE)
#: ``key=value`` pairs of a libpq keyword string (``host=db password='x y'``).
_KEYWORD = re.compile(r"(?P<key>[A-Za-z_]\w*)\s*=\s*(?P<value>'(?:[^'\\]|\\.)*'|[^\s]*)")
#: A URL inside free text (an exception's message).
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s'\"]+")


def _end_of_authority(rest: str) -> int:
    ends = [i for i in (rest.find(c) for c in "/?#") if i >= 0]
    return min(ends) if ends else len(rest)


def _hide_query(query: str, secrets: list[str]) -> str:
    """``a=1&password=x`` -> ``a=1&password=***`` (keys compared after percent-decoding, as asyncpg reads them)."""
    parts = []
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if eq and _SECRET_KEY.search(unquote_plus(key)):
            secrets.append(value)
            part = f"{key}={HIDDEN}"
        parts.append(part)
    return "&".join(parts)


def _redact(dsn: str) -> tuple[str, list[str]]:
    """The URL with its secrets hidden, and the secrets as they were written."""
    secrets: list[str] = []
    scheme, sep, rest = dsn.partition("://")
    if not sep:  # a libpq keyword string, or not a URL at all

        def hide(match: re.Match[str]) -> str:
            if not _SECRET_KEY.search(match["key"]):
                return match[0]
            secrets.append(match["value"])
            return f"{match['key']}={HIDDEN}"

        return _KEYWORD.sub(hide, dsn), secrets
    end = _end_of_authority(rest)
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        # A '/', '?' or '#' in the password, not percent-encoded: the authority's end cannot be told, so everything
        # up to the last '@' is hidden (more than needed when an '@' is in the query: never less).
        at = rest.rfind("@")
        secrets.append(rest[:at])
        rest = rest[at + 1 :]
        end = _end_of_authority(rest)
        authority, tail = f"{HIDDEN}@{rest[:end]}", rest[end:]
    elif "@" in authority:
        userinfo, _, hosts = authority.rpartition("@")
        user, colon, password = userinfo.partition(":")
        if colon:
            secrets.append(password)
            authority = f"{user}:{HIDDEN}@{hosts}"
    path, question, query = tail.partition("?")
    if question:
        tail = f"{path}?{_hide_query(query, secrets)}"
    return f"{scheme}://{authority}{tail}", secrets


def redact(dsn: str) -> str:
    """``dsn`` without its password: the userinfo's (with or without a user) and any ``password=``-like query or
    keyword parameter become ``***``. What every message, log line and recorded file shows of a database URL."""
    return _redact(dsn)[0]


def scrub(text: str, dsn: str) -> str:
    """``text`` (an exception's message) without ``dsn``'s secrets, in any spelling, nor any URL's password."""
    redacted, secrets = _redact(dsn)
    text = text.replace(dsn, redacted)
    spellings = {form for secret in secrets for form in (secret, unquote(secret), unquote_plus(secret)) if form}
    for secret in sorted(spellings, key=len, reverse=True):
        text = text.replace(secret, HIDDEN)
    return _URL.sub(lambda match: redact(match[0]), text)


async def connect(dsn: str, *, timeout: float, **options: object) -> asyncpg.Connection:
    """``asyncpg.connect`` whose every failure is one line naming the URL without its password.

    Raises :class:`ConfigError` when the URL cannot be used as written (asyncpg's parser raises ValueError,
    TypeError, OverflowError for a port out of range, or ClientConfigurationError) and :class:`DataError` when the
    server cannot be reached in ``timeout`` seconds or refuses (no such database, role, wrong password)."""
    shown = redact(dsn)
    try:
        conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=timeout, **options)
    except TimeoutError:
        raise DataError(f"{shown}: cannot connect to PostgreSQL (no answer within {timeout:g} s)") from None
    except OSError as exc:
        raise DataError(f"{shown}: cannot connect to PostgreSQL ({scrub(str(exc), dsn)})") from None
    except asyncpg.PostgresError as exc:
        raise DataError(f"{shown}: PostgreSQL refused the connection ({scrub(str(exc), dsn)})") from None
    except (asyncpg.ClientConfigurationError, ValueError, TypeError, ArithmeticError) as exc:
        reason = scrub(str(exc), dsn) or type(exc).__name__
        raise ConfigError(f"{shown}: not a usable PostgreSQL URL ({reason})") from None
    except asyncpg.InterfaceError as exc:
        raise DataError(f"{shown}: cannot connect to PostgreSQL ({scrub(str(exc), dsn)})") from None
    return conn
