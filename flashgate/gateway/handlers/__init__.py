"""The handlers of the routes (gateway/routes.py), one module per area.

A handler is ``handler(req, match, who) -> answer``: ``match`` carries the route's
parameters and, for an event's path, the event's runtime (``match.ert``, None for
an event the worker does not know); ``who`` is the caller the router let in (None
for a public route, ``routes.OPERATOR``, or the buyer's user id). The answer is
bytes, a ``Pending`` or an awaitable of bytes.
"""

from __future__ import annotations

from flashgate.gateway.handlers.buyer import Buyer
from flashgate.gateway.handlers.figures import Figures
from flashgate.gateway.handlers.lifecycle import Lifecycle
from flashgate.gateway.handlers.operations import Operations
from flashgate.gateway.handlers.operator import Operator
from flashgate.gateway.handlers.pages import Pages
from flashgate.gateway.handlers.public import Public


def make(gw) -> dict[str, object]:
    """The handlers of every area, by the name routes.py gives it."""
    public = Public(gw)
    pages = Pages(gw, public.viewed)
    return {"public": public, "buyer": Buyer(gw), "operator": Operator(gw),
            "operations": Operations(gw), "lifecycle": Lifecycle(gw),
            "figures": Figures(gw, pages.not_found_page), "pages": pages}
