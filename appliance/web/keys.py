"""Typed application keys for objects shared across handlers (no module globals)."""

from __future__ import annotations

import aiohttp
import sqlite_utils
from aiohttp import web

from appliance.config import Settings
from appliance.health.report import CachedHealth
from appliance.jobs.queue import Queue
from appliance.metrics import Tally
from appliance.security.audit import ReadLedger
from appliance.security.oauth import Discovery, StateStore
from appliance.security.sessions import SessionStore
from appliance.security.tokens import TokenService
from appliance.web.ingest import PipelineIngest

SETTINGS = web.AppKey("settings", Settings)
DB = web.AppKey("db", sqlite_utils.Database)
HTTP = web.AppKey("http", aiohttp.ClientSession)
QUEUE = web.AppKey("queue", Queue)
STARTED_AT = web.AppKey("started_at", float)
TOKENS = web.AppKey("tokens", TokenService)
SESSIONS = web.AppKey("sessions", SessionStore)
INGEST = web.AppKey("ingest", PipelineIngest)
FRAMES_DIR = web.AppKey("frames_dir", str)
READS = web.AppKey("reads", ReadLedger)
HEALTH = web.AppKey("health", CachedHealth)
METRICS = web.AppKey("metrics", Tally)
DISCOVERY = web.AppKey("discovery", Discovery)
STATES = web.AppKey("oauth_states", StateStore)
