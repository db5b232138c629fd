"""What a log target names: a SQLite file's path, or a PostgreSQL database's URL.

Apart from the stores (it imports none of them), so that each store, the integrity checks and
the command line can tell the two apart without importing one another.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["DATABASE_SCHEMES", "is_database_url", "redact_url"]

DATABASE_SCHEMES = ("postgresql://", "postgres://")
"""How a target that names a PostgreSQL database begins."""


def is_database_url(target: object) -> bool:
    """Whether ``target`` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.lower().startswith(DATABASE_SCHEMES)


def redact_url(url: str) -> str:
    """``url`` without its password, for messages (a path is returned as it is)."""
    if not is_database_url(url):
        return url
    parts = urlsplit(url)
    if not parts.password:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))
