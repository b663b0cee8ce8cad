"""Shifter's REST API (`/api/lookup/...`, `/api/pull/...`, ...) beside gRPC, over the
same core: `api` holds the operations, `shapes` Shifter's JSON and the error table,
`server` the aiohttp routes, run on the gateway's asyncio loop. An edge: the core never
imports it."""

from imagegw.gateway.rest.api import RestApi, RestServices
from imagegw.gateway.rest.server import build_app, serve_rest, start_rest

__all__ = ["RestApi", "RestServices", "build_app", "serve_rest", "start_rest"]
