"""The gRPC services' server side (sandbox, weights): token check and start.

The rule is runtime/core/credentials.py's: 127.0.0.1 needs no token, any other
address needs one (from an owner-only file or the environment, never the
config), and every call must carry `authorization: Bearer <token>` or is
refused with UNAUTHENTICATED before its handler runs.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from runtime.core.credentials import same_secret
from runtime.core.errors import ConfigError

class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}"

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "")
        if handler is None or same_secret(given, self.expected):
            return handler

        def deny(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(deny)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(deny)
        return grpc.unary_unary_rpc_method_handler(deny)


def start_server(register: Callable[[grpc.Server], None], host: str, port: int, token: str | None, field: str,
                 workers: int, options: list[tuple[str, int]] | None = None) -> tuple[grpc.Server, int]:
    """A started server with `register`'s servicer, the token interceptor when a token is set; (server, port)."""
    server = grpc.server(ThreadPoolExecutor(max_workers=workers, thread_name_prefix=field.split(".")[0]),
                         interceptors=[TokenInterceptor(token)] if token else [], options=options or [])
    register(server)
    bound = server.add_insecure_port(f"{host}:{port}")
    if bound == 0:
        raise ConfigError(f"{field.rsplit('.', 1)[0]}: cannot bind {host}:{port}")
    server.start()
    return server, bound
