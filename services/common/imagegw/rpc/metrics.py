"""gRPC request metrics (edge code): server interceptors, for the threaded and for the
asyncio server, counting every request by service, method and final status code into
`imagegw.metrics`' registry."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from imagegw.metrics import GRPC_REQUESTS, GRPC_SECONDS


def _code_name(context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any],
               default: grpc.StatusCode) -> str:
    code = context.code() if hasattr(context, "code") else None
    return (code if isinstance(code, grpc.StatusCode) else default).name


class _RequestMetrics(grpc.ServerInterceptor):
    """Counts every handled request by service, method and final status code."""

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(handler_call_details)
        if handler is None:  # unknown method: grpc answers UNIMPLEMENTED itself
            return None
        service, _, method = handler_call_details.method.lstrip("/").rpartition("/")
        labels = (service, method)
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _single(handler.unary_unary, labels), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _single(handler.stream_unary, labels), handler.request_deserializer,
                handler.response_serializer)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _streamed(handler.unary_stream, labels), handler.request_deserializer,
                handler.response_serializer)
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _streamed(handler.stream_stream, labels), handler.request_deserializer,
                handler.response_serializer)
        return handler


#: Most (method, code) pairs whose metric children `_record` keeps (methods x codes).
MAX_CACHED_LABELS = 4096
_children: dict[tuple[tuple[str, str], str], tuple[Any, Any]] = {}


def _record(labels: tuple[str, str], code: str, started: float) -> None:
    # The labelled children are looked up once per (method, code), not on every call.
    children = _children.get((labels, code))
    if children is None:
        children = (GRPC_REQUESTS.labels(*labels, code), GRPC_SECONDS.labels(*labels))
        if len(_children) < MAX_CACHED_LABELS:
            _children[labels, code] = children
    children[0].inc()
    children[1].observe(time.monotonic() - started)


def _single(behavior: Callable[..., Any], labels: tuple[str, str]) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        started = time.monotonic()
        try:
            response = behavior(request, context)
        except BaseException:
            _record(labels, _code_name(context, grpc.StatusCode.UNKNOWN), started)
            raise
        _record(labels, _code_name(context, grpc.StatusCode.OK), started)
        return response
    return handle


def _streamed(behavior: Callable[..., Any], labels: tuple[str, str]) -> Callable[..., Any]:
    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        started = time.monotonic()
        try:
            yield from behavior(request, context)
        except GeneratorExit:  # the client went away mid-stream
            _record(labels, grpc.StatusCode.CANCELLED.name, started)
            raise
        except BaseException:
            _record(labels, _code_name(context, grpc.StatusCode.UNKNOWN), started)
            raise
        _record(labels, _code_name(context, grpc.StatusCode.OK), started)
    return handle


class _AioRequestMetrics(grpc.aio.ServerInterceptor):
    """The same for the asyncio server, whose handlers are coroutines (unary, and
    streaming handlers that write with `context.write`) or async generators."""

    def __init__(self) -> None:
        #: method -> (its handler, that handler wrapped): a method's handler is the same
        #: object on every call, so it is wrapped once, not per call.
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                                handler_call_details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        name = handler_call_details.method
        cached = self._wrapped.get(name)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, name)
        if len(self._wrapped) < MAX_CACHED_LABELS:
            self._wrapped[name] = (handler, wrapped)
        return wrapped

    @staticmethod
    def _wrap(handler: Any, name: str) -> Any:
        service, _, method = name.lstrip("/").rpartition("/")
        labels = (service, method)
        for kind, make in (("unary_unary", grpc.unary_unary_rpc_method_handler),
                           ("stream_unary", grpc.stream_unary_rpc_method_handler),
                           ("unary_stream", grpc.unary_stream_rpc_method_handler),
                           ("stream_stream", grpc.stream_stream_rpc_method_handler)):
            behavior = getattr(handler, kind)
            if behavior is None:
                continue
            wrapped = (_aio_generator(behavior, labels) if inspect.isasyncgenfunction(behavior)
                       else _aio_coroutine(behavior, labels))
            return make(wrapped, handler.request_deserializer, handler.response_serializer)
        return handler


def _aio_coroutine(behavior: Callable[..., Any], labels: tuple[str, str]) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.monotonic()
        try:
            response = await behavior(request, context)
        except asyncio.CancelledError:  # the client went away
            _record(labels, grpc.StatusCode.CANCELLED.name, started)
            raise
        except BaseException:
            _record(labels, _code_name(context, grpc.StatusCode.UNKNOWN), started)
            raise
        _record(labels, _code_name(context, grpc.StatusCode.OK), started)
        return response
    return handle


def _aio_generator(behavior: Callable[..., Any], labels: tuple[str, str]) -> Callable[..., Any]:
    async def handle(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        started = time.monotonic()
        try:
            async with contextlib.aclosing(behavior(request, context)) as responses:
                async for response in responses:
                    yield response
        except (asyncio.CancelledError, GeneratorExit):  # the client went away mid-stream
            _record(labels, grpc.StatusCode.CANCELLED.name, started)
            raise
        except BaseException:
            _record(labels, _code_name(context, grpc.StatusCode.UNKNOWN), started)
            raise
        _record(labels, _code_name(context, grpc.StatusCode.OK), started)
    return handle


_INTERCEPTOR = _RequestMetrics()
_AIO_INTERCEPTOR = _AioRequestMetrics()


def server_interceptor() -> grpc.ServerInterceptor:
    """The interceptor every server of the process shares (see grpcserver.create_server)."""
    return _INTERCEPTOR


def aio_server_interceptor() -> grpc.aio.ServerInterceptor:
    """The interceptor of the asyncio servers (see rpc.server.create_aio_server)."""
    return _AIO_INTERCEPTOR
