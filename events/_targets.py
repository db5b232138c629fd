"""What a log target names: a SQLite file's path, or a PostgreSQL database's URL.

Apart from the stores (it imports none of them), so that each store, the integrity checks and
the command line can tell the two apart without importing one another.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["DATABASE_SCHEMES", "is_database_url", "redact_url", "without_password"]

DATABASE_SCHEMES = ("postgresql://", "postgres://")
"""How a target that names a PostgreSQL database begins."""


def is_database_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.lower().startswith(DATABASE_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without its password, for messages (a path is returned as it is)."""
    return without_password(url) if is_database_url(url) else url


def without_password(url: str) -> str:
    """Any URL with its password, if it has one, shown as ``***``.

    >>> without_password("http://collector:s3cret@127.0.0.1:4318")
    'http://collector:***@127.0.0.1:4318'
    """
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
