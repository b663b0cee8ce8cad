"""The aiohttp edge of the Shifter REST API: routes, JSON answers, TLS.

It runs on the gateway's one asyncio loop beside grpc.aio (`start_rest`, handed to
`GatewayApp.add_async_server`). The synchronous core runs on the gateway's bounded
thread pools (`Blocking`), never on the loop, and every request is charged to its
caller on the same fair share as the gRPC calls: by peer address at once when it
carries no credential, by the verified uid otherwise."""

from __future__ import annotations

import functools
import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

from aiohttp import web

from imagegw.domain.config import Config, parse_host_port
from imagegw.domain.errors import ConfigError, ImageGatewayError
from imagegw.gateway.aio import AsyncServer, Blocking
from imagegw.gateway.core.fairshare import Admission, FairShare, Kind
from imagegw.gateway.rest.api import RestApi
from imagegw.gateway.rest.shapes import error_body, http_status_for

__all__ = ["build_app", "serve_rest", "ssl_context", "start_rest"]

log = logging.getLogger(__name__)

#: Largest request body (pull ACLs, import paths): small JSON only.
MAX_BODY = 64 * 1024
CONTENT_TYPE = "application/json"
ROUTES = ["/api/lookup/<system>/<type>/<tag>/", "/api/pull/<system>/<type>/<tag>/",
          "/api/list/<system>/", "/api/expire/<system>/<type>/<tag>/",
          "/api/autoexpire/<system>/", "/api/doimport/<system>/<type>/<tag>/",
          "/api/queue/<system>/"]


def json_response(status: HTTPStatus, data: Any) -> web.Response:
    """A JSON answer with `Content-Type: application/json` exactly (Shifter's C client
    compares it, no charset) and a Content-Length."""
    return web.Response(status=int(status), body=json.dumps(data).encode("utf-8"),
                        headers={"Content-Type": CONTENT_TYPE, "Server": "imagegw"})


def _credentials(request: web.Request) -> list[str]:
    return request.headers.getall("authentication", [])


class _Handlers:
    def __init__(self, api: RestApi, blocking: Blocking, share: FairShare) -> None:
        self.api = api
        self.blocking = blocking
        self.share = share

    async def _run(self, request: web.Request, call: Callable[..., Any], *,
                   slow: bool = False) -> web.Response:
        admission = Admission(self.share, Kind.CALL, request.remote or "unknown")
        run = self.blocking.run_slow if slow else self.blocking.run
        try:
            if not _credentials(request):
                admission.charge(None)
            return json_response(HTTPStatus.OK,
                                 await run(functools.partial(call, admission=admission)))
        except ImageGatewayError as exc:
            status = http_status_for(exc)
            log.info("REST %s %s: %d %s", request.method, request.path, status, exc.message)
            return json_response(status, error_body(status, str(exc)))
        except Exception:
            log.exception("REST %s %s failed", request.method, request.path)
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            return json_response(status, error_body(status, "internal error; the gateway's "
                                                            "log has the details"))
        finally:
            admission.release()

    async def index(self, request: web.Request) -> web.Response:
        return json_response(HTTPStatus.OK, {"api": "Shifter image gateway", "routes": ROUTES})

    async def lookup(self, request: web.Request) -> web.Response:
        m = request.match_info
        return await self._run(request, functools.partial(
            self.api.lookup, m["system"], m["itype"], m["tag"], _credentials(request)))

    async def pull(self, request: web.Request) -> web.Response:
        m, body = request.match_info, await request.read()
        return await self._run(request, functools.partial(
            self.api.pull, m["system"], m["itype"], m["tag"], _credentials(request), body),
            slow=True)

    async def list_images(self, request: web.Request) -> web.Response:
        return await self._run(request, functools.partial(
            self.api.list_images, request.match_info["system"], _credentials(request)))

    async def queue(self, request: web.Request) -> web.Response:
        return await self._run(request, functools.partial(
            self.api.queue, request.match_info["system"], _credentials(request)))

    async def expire(self, request: web.Request) -> web.Response:
        m = request.match_info
        return await self._run(request, functools.partial(
            self.api.expire, m["system"], m["itype"], m["tag"], _credentials(request)))

    async def autoexpire(self, request: web.Request) -> web.Response:
        return await self._run(request, functools.partial(
            self.api.autoexpire, request.match_info["system"], _credentials(request)))

    async def doimport(self, request: web.Request) -> web.Response:
        m, body = request.match_info, await request.read()
        return await self._run(request, functools.partial(
            self.api.doimport, m["system"], m["itype"], m["tag"], _credentials(request), body),
            slow=True)


@web.middleware
async def _json_errors(request: web.Request, handler: Callable) -> web.StreamResponse:
    """aiohttp's own answers (no such route, wrong method, body too large) as JSON too."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        status = HTTPStatus(exc.status)
        message = {
            HTTPStatus.NOT_FOUND: f"no such API route: {request.path} (routes end in '/'; "
                                  "see GET /)",
            HTTPStatus.METHOD_NOT_ALLOWED: f"{request.method} is not allowed on {request.path}"
                                           " (pull and doimport are POST, the rest GET)",
            HTTPStatus.REQUEST_ENTITY_TOO_LARGE: f"the request body is larger than {MAX_BODY} "
                                                 "bytes",
        }.get(status, exc.reason)
        return json_response(status, error_body(status, message))


def build_app(api: RestApi, blocking: Blocking, share: FairShare) -> web.Application:
    handlers = _Handlers(api, blocking, share)
    app = web.Application(middlewares=[_json_errors], client_max_size=MAX_BODY)
    image = "{system}/{itype}/{tag:.+}/"
    # No implicit HEAD: Shifter's expire routes are GETs that change things.
    app.add_routes([
        web.get("/", handlers.index, allow_head=False),
        web.get("/api/lookup/" + image, handlers.lookup, allow_head=False),
        web.post("/api/pull/" + image, handlers.pull),
        web.get("/api/list/{system}/", handlers.list_images, allow_head=False),
        web.get("/api/queue/{system}/", handlers.queue, allow_head=False),
        web.get("/api/expire/" + image, handlers.expire, allow_head=False),
        web.get("/api/autoexpire/{system}/", handlers.autoexpire, allow_head=False),
        web.post("/api/doimport/" + image, handlers.doimport),
    ])
    return app


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """TLS with the gateway's TLSCertificate/TLSKey (and TLSClientCA) when set."""
    if not config.tls_certificate:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(config.tls_certificate, config.tls_key)
        if config.tls_client_ca:
            context.load_verify_locations(config.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"TLSCertificate/TLSKey: cannot load for the REST API: {exc}") from exc
    return context


async def serve_rest(app: web.Application, listen: str,
                     context: ssl.SSLContext | None) -> tuple[web.AppRunner, str]:
    """Binds `listen` and serves `app` on the running loop; returns the runner (call
    `cleanup()` to stop) and the bound "host:port"."""
    host, port = parse_host_port(listen, "RestListen")
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=context, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"RestListen: cannot listen on {listen}: {exc.strerror}") from exc
    bound = runner.addresses[0]
    address = f"[{bound[0]}]:{bound[1]}" if ":" in bound[0] else f"{bound[0]}:{bound[1]}"
    return runner, address


def start_rest(app: web.Application, config: Config) -> AsyncServer:
    """The REST server as `GatewayApp.add_async_server` runs it: binds RestListen on the
    running loop and returns the coroutine function that stops it."""
    context = ssl_context(config)
    listen = config.rest_listen or ""

    async def start() -> Callable[[float], Awaitable[None]]:
        runner, address = await serve_rest(app, listen, context)
        log.info("Shifter REST API listening on %s://%s", "https" if context else "http",
                 address)

        async def stop(grace: float) -> None:
            await runner.shutdown()
            await runner.cleanup()
        return stop
    return start
