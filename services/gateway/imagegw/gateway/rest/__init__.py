"""Shifter's REST API (`/api/lookup/...`, `/api/pull/...`, ...) beside gRPC, over the
same core: `api` holds the operations, `shapes` Shifter's JSON and the error table,
`server` the aiohttp routes and the loop they run on. An edge: the core never
imports it."""

from imagegw.gateway.rest.api import RestApi, RestServices
from imagegw.gateway.rest.server import RestThread, build_app, serve_rest

__all__ = ["RestApi", "RestServices", "RestThread", "build_app", "serve_rest"]
