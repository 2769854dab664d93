"""WeightService over gRPC: any kept version, streamed in chunks; a client that loads it into vLLM.

Bind and token rules are those of serve/grpc_auth.py (token: weights.grpc.token_file or FACTORY_WEIGHTS_TOKEN).
"""

from __future__ import annotations

from typing import Any

import grpc

from runtime.core.config import WeightsGrpcConfig
from runtime.core.errors import FactoryError
from runtime.model.weights import DEFAULT_CHUNK, VersionStore, from_chunks, to_chunks
from runtime.core import credentials
from serve import grpc_auth
from runtime.protos import weights_pb2 as pb
from runtime.protos import weights_pb2_grpc as pb_grpc

SECRET = "weights.grpc.token"


class WeightServicer(pb_grpc.WeightServiceServicer):
    def __init__(self, store: VersionStore):
        self.store = store

    def Latest(self, request, context):
        if self.store.latest() < 0:
            return pb.VersionInfo(version=-1)
        version, state = self.store.get()
        return pb.VersionInfo(version=version, tensors=len(state),
                              bytes=sum(t.numel() * t.element_size() for t in state.values()))

    def Stream(self, request, context):
        try:
            version, state = self.store.get(None if request.latest else request.version)
        except FactoryError as exc:
            context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        for chunk in to_chunks(version, state, request.chunk_bytes or DEFAULT_CHUNK):
            yield pb.TensorChunk(**chunk)


def serve(store: VersionStore, host: str = credentials.LOOPBACK, port: int = 0, token: str | None = None,
          token_file: str | None = None) -> tuple[grpc.Server, int]:
    """Start a WeightService; `token` (else `token_file`, else FACTORY_WEIGHTS_TOKEN) is required off loopback."""
    token = credentials.required_secret(host, SECRET, token_file, token)
    servicer = WeightServicer(store)
    return grpc_auth.start_server(lambda server: pb_grpc.add_WeightServiceServicer_to_server(servicer, server),
                                  host, port, token, SECRET, workers=8,
                                  options=[("grpc.max_send_message_length", 64 << 20)])


def expose(store: VersionStore, cfg: WeightsGrpcConfig) -> tuple[grpc.Server, int]:
    """A WeightService over `store` as `weights.grpc` configures it (what a WeightBroadcaster is handed)."""
    return serve(store, cfg.host, cfg.port, token_file=cfg.token_file)


class WeightClient:
    def __init__(self, endpoint: str, token: str | None = None, timeout_s: float = 300.0):
        self.channel = grpc.insecure_channel(endpoint, options=[("grpc.max_receive_message_length", 64 << 20)])
        self.stub = pb_grpc.WeightServiceStub(self.channel)
        self.metadata = credentials.bearer(token)
        self.timeout_s = timeout_s

    def latest(self) -> int:
        return self.stub.Latest(pb.LatestRequest(), timeout=30, metadata=self.metadata).version

    def fetch(self, version: int | None = None, chunk_bytes: int = 0) -> tuple[int, dict[str, Any]]:
        request = pb.StreamRequest(version=version or 0, latest=version is None, chunk_bytes=chunk_bytes)
        return from_chunks(self.stub.Stream(request, timeout=self.timeout_s, metadata=self.metadata))

    def load_into(self, server, version: int | None = None) -> int:
        """Fetch a version and reload it in place into an InferenceServer (plain or in-process)."""
        version, state = self.fetch(version)
        return server.load_weights(version, state)

    def close(self) -> None:
        self.channel.close()
