"""Every ``web.AppKey`` in one place."""

from __future__ import annotations

from aiohttp import web

from chatd.deadlines import Deadline, Deadlines
from chatd.live.fanout import Fanout
from chatd.live.hub import Hub
from chatd.live.token_watch import TokenWatch
from chatd.ports import Backends
from chatd.service import ChatService
from chatd.settings import Settings
from chatd.supervisor import Supervisor
from chatd.workers.pipeline import Pipeline

SETTINGS = web.AppKey("settings", Settings)
BACKENDS = web.AppKey("backends", Backends)
SERVICE = web.AppKey("service", ChatService)
SUPERVISOR = web.AppKey("supervisor", Supervisor)
PIPELINE = web.AppKey("pipeline", Pipeline)
FANOUT = web.AppKey[Fanout]("fanout")
HUB = web.AppKey("hub", Hub)
TOKEN_WATCH = web.AppKey("token_watch", TokenWatch)

# The request's deadline (error_middleware), so that a handler opening a live stream can lift it.
# Every in-flight request's deadline, kept by one sweeping timer (chatd/deadlines.py).
DEADLINES = web.AppKey("deadlines", Deadlines)
REQUEST_DEADLINE = web.RequestKey("request_deadline", Deadline)
