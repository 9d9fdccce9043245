"""The one table from library errors to gRPC status codes, applied to every RPC by one interceptor."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from .. import errors

log = logging.getLogger("jobworkerd.api")

STATUS_CODES: dict[type[errors.JobWorkerError], grpc.StatusCode] = {
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.StartFailed: grpc.StatusCode.FAILED_PRECONDITION,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.OutOfRange: grpc.StatusCode.OUT_OF_RANGE,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.InternalError: grpc.StatusCode.INTERNAL,
}


def status_code(error: errors.JobWorkerError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return grpc.StatusCode.INTERNAL


async def _abort(context: grpc.aio.ServicerContext, exc: BaseException, method: str) -> None:
    if isinstance(exc, errors.JobWorkerError):
        code = status_code(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.error("%s: %s", method, exc.message)
        await context.abort(code, exc.message)
    incident = uuid.uuid4().hex[:8]
    log.exception("%s: unexpected error (incident %s)", method, incident)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in jobworkerd (incident {incident}; see its log)")


class _Undecodable:
    """What a request that protobuf could not parse becomes (e.g. a string field that is not UTF-8):
    the handler answers INVALID_ARGUMENT, where grpc itself would answer UNKNOWN."""

    def __init__(self, error: Exception):
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except Exception as exc:  # google.protobuf.message.DecodeError, and anything else a parser raises
            return _Undecodable(exc)

    return deserialize


def _check_decoded(request: Any, method: str) -> None:
    if isinstance(request, _Undecodable):
        raise errors.InvalidArgument(f"the request is not a valid message for {method}: {request.error}")


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            _check_decoded(request, method)
            return await behavior(request, context)
        except (errors.JobWorkerError, Exception) as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc, method)

    return wrapped


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            _check_decoded(request, method)
            async for item in behavior(request, context):
                yield item
        except (errors.JobWorkerError, Exception) as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            await _abort(context, exc, method)

    return wrapped


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Turns JobWorkerError into its status code and message; anything else into INTERNAL with an
    incident id that is also logged. Servicer methods therefore just raise."""

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[override]
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        method = handler_call_details.method
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(handler.unary_stream, method),
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return handler
