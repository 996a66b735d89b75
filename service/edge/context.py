"""Typed keys for what the app factory puts on the aiohttp application."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

from service.application.auth import TokenSigner
from service.application.budgets import Budgets
from service.application.health import StoreHealth
from service.application.hub import Hub
from service.application.reconcile import UnrecordedCloses
from service.application.writer import Writer
from service.edge.metrics import Metrics
from service.runtime.settings import Settings
from service.runtime.tracing import Tracer
from service.storage.store import SessiondApplication, StoreConfig

if TYPE_CHECKING:
    from service.application.readmodels import ReadModels
    from service.edge.folds import Folds
    from service.edge.http.stream import WatcherRegistry
    from service.edge.ws import SocketRegistry

SETTINGS = web.AppKey("settings", Settings)
STORE_CONFIG = web.AppKey("store_config", StoreConfig)
STORE = web.AppKey("store", SessiondApplication)
WRITER = web.AppKey("writer", Writer)
HUB = web.AppKey("hub", Hub)
METRICS = web.AppKey("metrics", Metrics)
SIGNER = web.AppKey("signer", TokenSigner)
READERS = web.AppKey("readers", ThreadPoolExecutor)
TRACER = web.AppKey("tracer", Tracer)
BUDGETS = web.AppKey("budgets", Budgets)
HEALTH = web.AppKey("health", StoreHealth)
CLOSES = web.AppKey("closes", UnrecordedCloses)
SOCKETS: web.AppKey[SocketRegistry] = web.AppKey("sockets")
WATCHERS: web.AppKey[WatcherRegistry] = web.AppKey("watchers")
READMODELS: web.AppKey[ReadModels] = web.AppKey("readmodels")
FOLDS: web.AppKey[Folds] = web.AppKey("folds")
