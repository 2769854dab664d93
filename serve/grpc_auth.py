"""Bind and token rules shared by the gRPC services (sandbox, weights).

127.0.0.1 needs no token. Any other address needs one, and every call must
carry `authorization: Bearer <token>` or is refused with UNAUTHENTICATED
before its handler runs. The token comes from an owner-only file or the
environment (runtime/credentials.py), never from the config.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from runtime.config import SECRETS
from runtime.credentials import read_secret
from runtime.errors import ConfigError

LOOPBACK = "127.0.0.1"


def client_token(secret: str, token_file: str | None) -> str | None:
    """The token of `secret` (a key of config.SECRETS) from `token_file`, else its variable; None if unset."""
    env, file_field = SECRETS[secret]
    return read_secret(env, token_file, file_field)


def resolve_token(host: str, secret: str, token_file: str | None, token: str | None = None) -> str | None:
    """The token a server binding `host` requires: `token` if given (Python callers), else as client_token.

    Raises ConfigError off 127.0.0.1 when there is none, or when the file is unsafe."""
    token = token or client_token(secret, token_file)
    if host != LOOPBACK and not token:
        env, file_field = SECRETS[secret]
        raise ConfigError(f"{secret}: binding {host} needs a token ({env} or {file_field}, an owner-only file)")
    return token


def bearer(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


class TokenInterceptor(grpc.ServerInterceptor):
    """Refuses every call whose metadata lacks `authorization: Bearer <token>`."""

    def __init__(self, token: str):
        self.expected = f"Bearer {token}".encode()

    def intercept_service(self, continuation, details):
        handler = continuation(details)
        given = dict(details.invocation_metadata).get("authorization", "").encode()
        if handler is None or hmac.compare_digest(given, self.expected):
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
