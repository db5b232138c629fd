"""``maker serve``: runs over HTTP, with their events as server-sent events."""

from ._guard import ServiceLimits
from ._service import Server, create_service, serve

__all__ = ["Server", "ServiceLimits", "create_service", "serve"]
