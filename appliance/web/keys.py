"""Typed application keys for objects shared across handlers (no module globals)."""

from __future__ import annotations

import aiohttp
import sqlite_utils
from aiohttp import web
from huey import Huey

from appliance.config import Settings

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", sqlite_utils.Database)
HTTP = web.AppKey("http", aiohttp.ClientSession)
HUEY = web.AppKey("huey", Huey)
STARTED_AT = web.AppKey("started_at", float)
