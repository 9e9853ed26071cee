"""PinnedStaging on its own: the small pinned buffers that carry each group's blocks between host-held images
and a GPU. Run on the CPU with a stand-in event that records waits (the copies are real copies here), so
the values, the order of the deferred writes and the buffer reuse can be checked."""
import pytest
import torch

from infdit_core.hardware import host


class Event:
    log = []

    def record(self, stream=None):
        Event.log.append(("record", id(self)))

    def synchronize(self):
        Event.log.append(("wait", id(self)))


@pytest.fixture
def staging(monkeypatch):
    Event.log = []
    monkeypatch.setattr(host, "stream_backend", lambda device: type("Backend", (), {"Event": Event}))
    monkeypatch.setattr(host, "pinned_empty", lambda shape, dtype: torch.empty(shape, dtype=dtype))
    return host.PinnedStaging("cpu")


def test_blocks_go_out_with_their_values(staging):
    a, b = torch.randn(2, 3, 8, 8), torch.randn(5, dtype=torch.float64)
    staging.next_group()
    out_a, out_b = staging.to_device(a).clone(), staging.to_device(b).clone()
    assert torch.equal(out_a, a) and torch.equal(out_b, b)


def test_a_write_runs_once_its_copy_is_done_with_the_values_of_its_time(staging):
    written = []
    staging.next_group()  # group 0 uses buffer 1
    d = torch.randn(4, 4)
    staging.to_host(d, lambda view: (written.append(view.clone()), Event.log.append(("write", None))))
    event = staging.events[staging.current]
    expected = d.clone()
    d.add_(1)  # the device tensor changes after the copy was queued: the copy has what it had
    assert written == []  # not yet: the host would wait on the copy
    staging.next_group()  # group 1 uses buffer 0: buffer 1's writes still pending
    assert written == []
    staging.next_group()  # group 2 reuses buffer 1: its event is waited on, then the write runs
    assert len(written) == 1 and torch.equal(written[0], expected)
    assert Event.log.index(("wait", id(event))) < Event.log.index(("write", None))  # waited on that copy first


def test_flush_runs_every_pending_write_in_order_and_waits_for_each_buffer(staging):
    order = []
    for g in range(3):
        staging.next_group()
        staging.to_host(torch.full((2,), float(g)), lambda view, g=g: order.append((g, view.tolist())))
    staging.flush()
    assert order == [(0, [0.0, 0.0]), (1, [1.0, 1.0]), (2, [2.0, 2.0])]
    assert staging.pending == [[], []] and all(e is None for e in staging.events)
    assert sum(1 for kind, _ in Event.log if kind == "wait") >= 2


def test_regions_of_a_group_do_not_overlap_and_are_aligned(staging):
    staging.next_group()
    staging._region((4096,), torch.uint8)  # sizes the buffer
    staging.flush()
    staging.next_group()
    staging.next_group()  # back on that buffer, empty
    views = [staging._region((n,), torch.uint8) for n in (3, 70, 1)]
    starts = [v.data_ptr() - staging.buffers[staging.current].data_ptr() for v in views]
    assert starts == sorted(starts) and all(s % 64 == 0 for s in starts)
    assert all(starts[i] + views[i].numel() <= starts[i + 1] for i in range(2))


def test_a_larger_request_grows_the_buffer_to_a_power_of_two_and_keeps_earlier_views(staging):
    staging.next_group()
    small = torch.arange(10, dtype=torch.float32)
    first = staging.to_device(small)
    big = torch.randn(1000)
    staging.to_device(big)
    assert staging.buffers[staging.current].numel() == host.pinned_bytes(1000 * 4)
    assert torch.equal(first, small)  # the old buffer lives on through its view until its copy is done
