"""Weight versions: chunked wire form round trips, versions only move forward."""

import pytest
import torch

from runtime.core.errors import StaleVersionError
from runtime.model.weights import VersionStore, from_chunks, to_chunks


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_chunks_round_trip_exactly(dtype):
    state = {"a.weight": torch.randn(33, 17).to(dtype), "b.bias": torch.randn(5).to(dtype), "empty": torch.zeros(0)}
    chunks = list(to_chunks(3, state, chunk_bytes=100))
    assert max(len(c["data"]) for c in chunks) <= 100 and len(chunks) > len(state)
    version, back = from_chunks(chunks)
    assert version == 3 and back.keys() == state.keys()
    for name in state:
        assert back[name].dtype == state[name].dtype and torch.equal(back[name], state[name])


def test_versions_only_move_forward_and_old_ones_are_dropped():
    store = VersionStore(keep=2)
    for v in (1, 2, 3):
        store.publish(v, {"w": torch.full((1,), float(v))})
    assert store.latest() == 3 and list(store.versions) == [2, 3]
    with pytest.raises(StaleVersionError, match="version 3 is not newer than 3"):
        store.publish(3, {})
    assert store.get(2)[1]["w"].item() == 2.0


def test_the_newest_version_while_the_broadcaster_is_replaced_is_peer_lost_which_callers_retry():
    from actors.weight_broadcaster import latest_of
    from runtime.core.errors import PeerLost

    def gone():
        raise ValueError("Failed to look up actor with name 'x/broadcaster/0'")  # what ray.get_actor raises

    with pytest.raises(PeerLost, match="broadcaster: not registered under its name"):
        latest_of(gone)()
