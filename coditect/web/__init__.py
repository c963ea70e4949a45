"""The web dashboard: ``coditect dashboard``, and ``--dashboard`` on ``run`` and ``demo``.

Server-rendered pages (Starlette, Jinja2 with every value escaped) and one small script for live
updates (Server-Sent Events from the batches' event streams). It reads and acts through an open
``ProjectOrchestrator``: the embedded run's own, or one on a shared Redis. Needs the ``dashboard``
extra: ``pip install 'coditect[dashboard]'``.
"""

from __future__ import annotations

from coditect.web.app import create_app
from coditect.web.security import check_bind
from coditect.web.server import DashboardServer
from coditect.web.state import Dashboard

__all__ = ["Dashboard", "DashboardServer", "check_bind", "create_app"]
