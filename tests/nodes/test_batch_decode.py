"""BatchDecode on real mp4 decoded by torchcodec: the batches equal ``default_collate`` of VideoDecode
items (every key, dtype, shape and value), float32 frames equal LeRobot's bit for bit, the batch
layout, exact resume at every batch position with decode threads and lookahead, errors raised from
decode threads, and batches that arrive from real DataLoader workers in one shared-memory segment."""

from __future__ import annotations

import json
import logging
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import IterableDataset, default_collate, get_worker_info
from torchdata.stateful_dataloader import StatefulDataLoader

from streamnodes.collate import (
    allocate_cameras,
    camera_layout,
    pack_shared,
    plan_decode_calls,
    positions_of,
    segment_offsets,
    write_frame,
)
from streamnodes.errors import ConfigError, StateError, StreamNodesError, VideoDecodeError
from streamnodes.format import open_dataset
from streamnodes.nodes.batch_decode import BatchDecode, collate_tabular
from streamnodes.nodes.video_decode import VideoDecode, to_torch
from streamnodes.types import VideoQuery
from tests.nodes.helpers import chain
from tests.nodes.test_video_decode import CAM, REF_ROOT, ListSource, ref_samples

FRONT, WRIST = "observation.images.front", "observation.images.wrist"
# Windows reaching past both episode ends (clamped rows repeat the boundary frame), of different lengths.
DELTAS = {FRONT: [-0.3, -0.1, 0.0, 0.2], WRIST: [-0.1, 0.0, 0.4], "observation.state": [-0.1, 0.0]}


# ---- helpers ---------------------------------------------------------------------------------------


def collated_reference(
    items: list[dict[str, Any]], batch_size: int, drop_last: bool = False
) -> list[dict[str, Any]]:
    """What a DataLoader's default_collate makes of VideoDecode items, batch by batch."""
    groups = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    if drop_last and groups and len(groups[-1]) < batch_size:
        groups.pop()
    return [default_collate(group) for group in groups]


def assert_batch_equal(got: dict[str, Any], want: dict[str, Any], where: Any = "") -> None:
    assert list(got) == list(want), where
    for key, value in want.items():
        if isinstance(value, torch.Tensor):
            assert isinstance(got[key], torch.Tensor), (where, key)
            assert got[key].dtype == value.dtype and got[key].shape == value.shape, (where, key)
            assert torch.equal(got[key], value), (where, key)
        else:
            assert got[key] == value, (where, key)


def assert_batches_equal(got: list[dict[str, Any]], want: list[dict[str, Any]], where: Any = "") -> None:
    assert len(got) == len(want), where
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert_batch_equal(a, b, (where, i))


def assert_layout(tensor: torch.Tensor, layout: str) -> None:
    frames = tensor.flatten(0, 1) if tensor.dim() == 5 else tensor
    if layout == "channels_last":
        assert frames.is_contiguous(memory_format=torch.channels_last) and not frames.is_contiguous()
        assert tensor.stride()[-3] == 1 and tensor.stride()[-1] == tensor.shape[-3]
    else:
        assert tensor.is_contiguous()


_REFERENCE: dict[Any, list[dict[str, Any]]] = {}


def reference_items(meta, dtype: torch.dtype, deltas: dict | None) -> list[dict[str, Any]]:
    key = (str(meta.root), dtype, json.dumps(deltas))
    if key not in _REFERENCE:
        node = VideoDecode(
            chain(meta, pool_size=2, buffer_size=4, delta_timestamps=deltas), image_dtype=dtype
        )
        _REFERENCE[key] = list(node)
    return _REFERENCE[key]


class ShutdownSource(ListSource):
    """A list source that records shutdown() and can fail at one position."""

    def __init__(self, items: list[Any], fail_at: int | None = None) -> None:
        super().__init__(items)
        self.fail_at = fail_at
        self.shut = 0

    def next(self) -> Any:
        if self.position == self.fail_at:
            self.position += 1
            raise StreamNodesError(f"source failed at {self.fail_at}")
        return super().next()

    def shutdown(self) -> None:
        self.shut += 1


# ---- pure arithmetic -------------------------------------------------------------------------------


def test_plan_decode_calls_splits_runs():
    assert plan_decode_calls([]) == []
    assert plan_decode_calls([4]) == [[4]]
    assert plan_decode_calls([0, 1, 2, 5, 6, 9]) == [[0, 1, 2], [5, 6], [9]]
    assert plan_decode_calls([0, 1, 2, 5, 6, 9], max_gap=0) == [[0], [1], [2], [5], [6], [9]]
    assert plan_decode_calls([0, 2, 5, 6, 9], max_gap=3) == [[0, 2, 5, 6, 9]]


def test_positions_of_inverts_the_expansion():
    assert positions_of(None, 3) == [[0], [1], [2]]
    assert positions_of([0, 0, 1, 2, 2], 3) == [[0, 1], [2], [3, 4]]
    assert positions_of([1, 0], 2) == [[1], [0]]


def test_camera_layout_strides():
    shape, stride = camera_layout(2, 3, 3, 4, 5, single=False, layout="channels_last")
    assert shape == (2, 3, 3, 4, 5)
    assert stride == (3 * 4 * 5 * 3, 4 * 5 * 3, 1, 5 * 3, 3)
    assert torch.empty_strided(shape, stride).flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    shape, stride = camera_layout(2, 1, 3, 4, 5, single=True, layout="channels_last")
    assert shape == (2, 3, 4, 5) and stride == (60, 1, 15, 3)
    assert camera_layout(2, 3, 3, 4, 5, single=False, layout="contiguous")[1] == (180, 60, 20, 5, 1)
    assert camera_layout(2, 1, 3, 4, 5, single=True, layout="contiguous") == ((2, 3, 4, 5), (60, 20, 5, 1))
    with pytest.raises(ValueError, match="layout"):
        camera_layout(1, 1, 3, 4, 5, single=True, layout="nhwc")


def test_segment_offsets_align_each_block():
    assert segment_offsets([]) == ([], 0)
    assert segment_offsets([10, 64, 1]) == ([0, 64, 128], 129)
    assert segment_offsets([8, 8], align=4) == ([0, 8], 16)


@pytest.mark.parametrize("shared", [False, True])
def test_allocate_cameras_carves_one_storage(shared):
    layouts = {
        "a": camera_layout(2, 3, 3, 4, 5, single=False, layout="channels_last"),
        "b": camera_layout(2, 1, 3, 6, 7, single=True, layout="contiguous"),
    }
    out = allocate_cameras(layouts, torch.float32, shared=shared)
    assert list(out) == ["a", "b"]
    for key, (shape, stride) in layouts.items():
        assert (
            tuple(out[key].shape) == shape and out[key].stride() == stride and out[key].dtype == torch.float32
        )
    assert out["a"].untyped_storage().data_ptr() == out["b"].untyped_storage().data_ptr()
    assert out["b"].storage_offset() * 4 == 1472  # "a" takes 2*3*3*4*5*4 = 1440 bytes, rounded up to 64
    assert out["a"].is_shared() is shared
    out["a"].fill_(1.0)
    out["b"].fill_(2.0)  # the blocks do not overlap
    assert bool((out["a"] == 1.0).all()) and bool((out["b"] == 2.0).all())
    assert allocate_cameras({}, torch.uint8) == {}


def test_pack_shared_copies_into_one_shared_storage():
    tensors = [
        torch.arange(6, dtype=torch.float32).reshape(2, 3).t(),  # not contiguous: copied as values
        torch.tensor([[True, False], [False, True]]),
        torch.tensor(7, dtype=torch.int64),  # 0-d
        torch.empty(0, 4, dtype=torch.float64),
        torch.tensor([1.5], dtype=torch.float64),
    ]
    out = pack_shared(tensors)
    assert len(out) == len(tensors)
    base = out[0].untyped_storage().data_ptr()
    for got, want in zip(out, tensors, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
        assert got.is_contiguous() and got.is_shared()
        assert got.untyped_storage().data_ptr() == base  # one storage for all
    assert [t.storage_offset() * t.element_size() for t in out] == [0, 64, 128, 192, 192]  # aligned blocks
    out[1].fill_(True)
    assert torch.equal(out[0], tensors[0]) and torch.equal(out[4], tensors[4])  # the blocks do not overlap
    assert pack_shared([]) == []


@pytest.mark.parametrize("shared", [False, True])
def test_collate_tabular_equals_default_collate(shared):
    rows = [
        {"action": np.arange(3, dtype=np.float32) + i, "index": np.int64(i), "task": f"t{i}", "done": i == 1,
         "pad": np.array([False, i == 0]), "timestamp": np.float32(i / 10)}
        for i in range(2)
    ]
    want = default_collate([{k: to_torch(v) for k, v in row.items()} for row in rows])
    got = collate_tabular(rows, shared=shared)
    assert_batch_equal(got, want)
    tensors = [v for v in got.values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 5 and all(t.is_shared() is shared for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == (1 if shared else 5)


def test_write_frame_float_equals_lerobot_for_every_byte_value():
    # A frame holding all 256 byte values, laid out as torchcodec returns it (CHW view of HWC memory).
    hwc = torch.arange(256 * 3, dtype=torch.int64).remainder(256).to(torch.uint8).reshape(16, 16, 3)
    frame = hwc.permute(2, 0, 1)
    for layout in ("channels_last", "contiguous"):
        shape, stride = camera_layout(1, 1, 3, 16, 16, single=True, layout=layout)
        out = torch.empty_strided(shape, stride, dtype=torch.float32)
        write_frame(out[0], frame)
        assert torch.equal(out[0], frame.float() / 255)  # LeRobot's conversion, bit for bit
        as_bytes = torch.empty_strided(shape, stride, dtype=torch.uint8)
        write_frame(as_bytes[0], frame)
        assert torch.equal(as_bytes[0], frame)


# ---- parity with VideoDecode + default_collate, and with LeRobot -----------------------------------


@pytest.mark.parametrize("threads", [0, 1, 2])
@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
@pytest.mark.parametrize("deltas", [None, DELTAS], ids=["single", "windows"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32], ids=["uint8", "float32"])
def test_batches_equal_default_collate_of_video_decode_items(video_dataset, dtype, deltas, layout, threads):
    meta = open_dataset(video_dataset)
    want = collated_reference(reference_items(meta, dtype, deltas), batch_size=8)
    node = BatchDecode(
        chain(meta, pool_size=2, buffer_size=4, delta_timestamps=deltas),
        batch_size=8,
        image_dtype=dtype,
        layout=layout,
        decode_threads=threads,
    )
    got = list(node)
    assert [len(b["index"]) for b in got] == [8] * 6 + [6]  # 54 frames: the last batch is partial
    assert_batches_equal(got, want)
    for batch in got:
        for key in (FRONT, WRIST):
            assert batch[key].dim() == (4 if deltas is None else 5)
            assert_layout(batch[key], layout)
    assert node.stats()["samples"] == 54 and node.stats()["batches"] == 7
    node.shutdown()


def test_drop_last_drops_the_partial_batch(video_dataset):
    meta = open_dataset(video_dataset)
    want = collated_reference(reference_items(meta, torch.uint8, DELTAS), batch_size=8, drop_last=True)
    node = BatchDecode(
        chain(meta, pool_size=2, buffer_size=4, delta_timestamps=DELTAS),
        batch_size=8,
        drop_last=True,
        image_dtype=torch.uint8,
        decode_threads=2,
    )
    got = list(node)
    assert len(got) == 6
    assert_batches_equal(got, want)
    node.shutdown()


@pytest.mark.parametrize("threads", [0, 2])
def test_window_frames_equal_lerobot_bit_for_bit(reference, threads):
    node = BatchDecode(ListSource(ref_samples(reference)), batch_size=32, decode_threads=threads)
    frames = torch.cat([batch[CAM] for batch in node])
    assert frames.shape == (237, 3, 3, 48, 64) and frames.dtype == torch.float32
    assert torch.equal(frames, torch.from_numpy(reference[CAM]))
    node.shutdown()


def test_single_frames_equal_lerobot_bit_for_bit(reference):
    node = BatchDecode(ListSource(ref_samples(reference, single=True)), batch_size=50, decode_threads=2)
    batches = list(node)
    frames = torch.cat([batch[CAM] for batch in batches])
    assert frames.shape == (237, 3, 48, 64)
    assert torch.equal(frames, torch.from_numpy(reference[f"nodelta__{CAM}"]))
    assert all(batch[CAM].is_contiguous(memory_format=torch.channels_last) for batch in batches)
    node.shutdown()


def test_padded_positions_decode_once_and_repeat(reference):
    # Row 19 ends episode 0: its window is [1.7, 1.9, 1.9]; rows 0 and 1 start it: [0.0, 0.0, 0.2] ...
    samples = ref_samples(reference, rows=[0, 1, 19])
    node = BatchDecode(ListSource(samples), batch_size=3, image_dtype=torch.uint8, decode_threads=0)
    (batch,) = list(node)
    assert torch.equal(batch[CAM][2, 1], batch[CAM][2, 2])
    stats = node.stats()
    assert stats["frames_requested"] == 9
    distinct = sum(len({round(t * 10) for t in s.videos[CAM].timestamps.tolist()}) for s in samples)
    assert stats["frames_decoded"] == distinct < 9
    # one get_frames_at call per run of consecutive frame indices
    runs = sum(
        len(plan_decode_calls(sorted({round(t * 10) for t in s.videos[CAM].timestamps.tolist()})))
        for s in samples
    )
    assert stats["decode_calls"] == runs
    # Unsorted timestamps come back in the requested order.
    for sample in samples:
        sample.videos[CAM].timestamps = sample.videos[CAM].timestamps[::-1].copy()
    (backwards,) = list(BatchDecode(ListSource(samples), batch_size=3, image_dtype=torch.uint8))
    assert torch.equal(backwards[CAM], batch[CAM].flip(1))


# ---- state -----------------------------------------------------------------------------------------


def run_with_states(node: BatchDecode, state: dict | None = None) -> tuple[list[dict], list[dict]]:
    node.reset(state)
    states, batches = [json.loads(json.dumps(node.state_dict()))], []
    for batch in node:
        batches.append(batch)
        states.append(json.loads(json.dumps(node.state_dict())))
    return batches, states


@pytest.mark.parametrize("ahead", [0, 1, 2])
@pytest.mark.parametrize("threads", [0, 1, 2])
def test_resume_at_every_batch_position(video_dataset, threads, ahead):
    meta = open_dataset(video_dataset)

    def build() -> BatchDecode:
        graph = chain(meta, pool_size=2, buffer_size=4, delta_timestamps=DELTAS)
        return BatchDecode(
            graph, batch_size=8, image_dtype=torch.uint8, decode_threads=threads, decode_ahead=ahead
        )

    node = build()
    batches, states = run_with_states(node)
    assert_batches_equal(batches, collated_reference(reference_items(meta, torch.uint8, DELTAS), 8))
    with pytest.raises(StopIteration):  # the epoch end stays the end
        next(node)
    node.shutdown()
    for k, state in enumerate(states):  # incl. 0, the partial last batch (k=6) and the epoch end (k=7)
        fresh = build()
        rest, _ = run_with_states(fresh, state)
        assert_batches_equal(rest, batches[k:], where=k)
        fresh.shutdown()


def test_resume_with_drop_last_and_state_shape(video_dataset):
    meta = open_dataset(video_dataset)

    def build() -> BatchDecode:
        graph = chain(meta, pool_size=2, buffer_size=4, delta_timestamps=DELTAS)
        return BatchDecode(
            graph, batch_size=8, drop_last=True, image_dtype=torch.uint8, decode_threads=2, decode_ahead=2
        )

    batches, states = run_with_states(build())
    assert len(batches) == 6 and set(states[0]) == {"source"}
    for k in (0, 5, 6):
        rest, _ = run_with_states(build(), states[k])
        assert_batches_equal(rest, batches[k:], where=k)
    with pytest.raises(StateError, match="source"):
        build().reset({"position": 3})


def test_state_is_the_source_state_at_the_last_returned_batch(reference):
    samples = ref_samples(reference, rows=list(range(10)))
    node = BatchDecode(
        ListSource(samples), batch_size=4, decode_threads=2, decode_ahead=2, image_dtype=torch.uint8
    )
    assert node.state_dict() == {"source": {"position": 0}}
    next(node)
    assert node.source.position == 10  # batches 2 and 3 are pulled ahead ...
    assert node.state_dict() == {"source": {"position": 4}}  # ... but the state is at batch 1's end
    next(node)
    assert node.state_dict() == {"source": {"position": 8}}
    next(node)
    assert node.state_dict() == {"source": {"position": 10}}
    with pytest.raises(StopIteration):
        next(node)
    node.shutdown()


def test_reset_none_mid_epoch_drops_pending_batches(video_dataset):
    meta = open_dataset(video_dataset)

    def build() -> BatchDecode:
        graph = chain(meta, pool_size=2, buffer_size=4, delta_timestamps=DELTAS)
        return BatchDecode(graph, batch_size=8, image_dtype=torch.uint8, decode_threads=2, decode_ahead=2)

    whole = build()
    list(whole)
    whole.reset(None)
    second_epoch = list(whole)
    node = build()
    next(node), next(node)
    node.reset(None)  # the two pending batches of epoch 0 are dropped
    assert_batches_equal(list(node), second_epoch)
    whole.shutdown(), node.shutdown()


# ---- errors ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", [0, 2])
def test_truncated_file_raises_from_the_decode_thread_naming_it(reference, tmp_path, threads):
    data = (REF_ROOT / str(reference[f"{CAM}__video_path"][0])).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    samples = ref_samples(reference, rows=[0, 1, 2, 3, 4, 5, 6, 230])
    samples[-1].videos[CAM].file = str(cut)  # frames from the lost second half
    node = BatchDecode(ListSource(samples), batch_size=4, decode_threads=threads, decode_ahead=1)
    first = next(node)  # the batch before the broken one arrives whole
    assert torch.equal(first[CAM], torch.from_numpy(reference[CAM][:4]))
    with pytest.raises(
        VideoDecodeError, match=r"cut\.mp4 \(episode 5, camera observation\.images\.cam\).*truncated"
    ):
        next(node)
    assert all(str(cut) not in d.cache for d in node._decoders)  # the failed decoder is not kept
    node.shutdown()


def test_timestamp_between_frames_raises_from_a_thread(reference):
    samples = ref_samples(reference, rows=[38, 39, 40, 41])
    samples[2].videos[CAM].timestamps = samples[2].videos[CAM].timestamps + 0.03
    node = BatchDecode(ListSource(samples), batch_size=4, decode_threads=2)
    with pytest.raises(VideoDecodeError) as info:
        next(node)
    message = str(info.value)
    assert "file-000.mp4" in message and "episode 1" in message and CAM in message
    assert "4.03" in message and "tolerance_s" in message
    node.shutdown()


def test_a_camera_with_another_frame_size_raises_naming_the_file(video_dataset):
    meta = open_dataset(video_dataset)
    samples = [s for s, _ in zip(chain(meta, shuffle=False), range(3), strict=False)]
    wrist = samples[2].videos[WRIST]
    # The front camera of sample 2 points at a wrist video (64x96 instead of 64x64).
    samples[2].videos[FRONT] = VideoQuery(
        FRONT, wrist.file, wrist.episode_index, wrist.timestamps, wrist.single
    )
    node = BatchDecode(ListSource(samples), batch_size=3, decode_threads=2)
    with pytest.raises(
        VideoDecodeError,
        match=r"wrist/chunk-000/file-000\.mp4 \(episode 0, camera observation\.images\.front\): frames are",
    ):
        next(node)
    node.shutdown()


def test_samples_with_different_windows_in_one_batch_raise(reference):
    samples = ref_samples(reference, rows=[5, 6])
    samples[1].videos[CAM].timestamps = samples[1].videos[CAM].timestamps[:2]
    with pytest.raises(ConfigError, match="different frames per camera"):
        next(BatchDecode(ListSource(samples), batch_size=2, decode_threads=0))
    single = ref_samples(reference, rows=[5], single=True)
    single[0].videos[CAM].timestamps = np.array([0.5, 0.6])
    with pytest.raises(ConfigError, match="single-frame query with 2 timestamps"):
        next(BatchDecode(ListSource(single), batch_size=1, decode_threads=0))


@pytest.mark.parametrize("ahead", [0, 1])
def test_a_source_error_is_raised_in_its_batch_turn(reference, ahead):
    source = ShutdownSource(ref_samples(reference, rows=list(range(8))), fail_at=5)
    node = BatchDecode(source, batch_size=4, decode_threads=2, decode_ahead=ahead, image_dtype=torch.uint8)
    first = next(node)
    assert first["index"].tolist() == [0, 1, 2, 3]
    with pytest.raises(StreamNodesError, match="source failed at 5"):
        next(node)
    node.shutdown()


def test_bad_arguments():
    source = ListSource([])
    for kwargs, match in [
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": 2, "decode_threads": -1}, "decode_threads"),
        ({"batch_size": 2, "decode_ahead": -1}, "decode_ahead"),
        ({"batch_size": 2, "image_dtype": torch.float16}, "image_dtype"),
        ({"batch_size": 2, "layout": "nhwc"}, "layout"),
        ({"batch_size": 2, "tolerance_s": -1}, "tolerance_s"),
        ({"batch_size": 2, "max_decoders": 0}, "max_decoders"),
    ]:
        with pytest.raises(ConfigError, match=match):
            BatchDecode(source, **kwargs)


# ---- memory, threads, reporting --------------------------------------------------------------------


def test_pin_memory_without_cuda_logs_once_and_uses_pageable_memory(reference, caplog):
    assert not torch.cuda.is_available()  # this machine; with CUDA the batches would be pinned
    samples = ref_samples(reference, rows=list(range(6)))
    with caplog.at_level(logging.INFO, logger="streamnodes.nodes.batch_decode"):
        node = BatchDecode(ListSource(samples), batch_size=3, pin_memory=True, decode_threads=2)
        batches = list(node)
    assert sum("pin_memory=True but no CUDA" in r.getMessage() for r in caplog.records) == 1
    assert not any(b[CAM].is_pinned() for b in batches)
    plain = list(BatchDecode(ListSource(samples), batch_size=3))
    assert_batches_equal(batches, plain)
    node.shutdown()


def test_decoder_caches_are_per_thread_and_bounded_in_total(video_dataset):
    meta = open_dataset(video_dataset)
    node = BatchDecode(
        chain(meta, pool_size=2, delta_timestamps=DELTAS), batch_size=4, decode_threads=2, max_decoders=3
    )
    list(node)
    assert node.max_decoders_per_thread == 1
    assert 1 <= len(node._decoders) <= 2  # one cache per decode thread, none for the calling thread
    assert all(len(d.cache) <= 1 for d in node._decoders)
    stats = node.stats()
    assert stats["cache"]["max_decoders"] == 2 and stats["cache"]["open_decoders"] <= 2
    assert stats["frames_decoded"] <= stats["frames_requested"]
    node.shutdown()


def test_shutdown_stops_threads_clears_caches_and_shuts_the_source(reference):
    source = ShutdownSource(ref_samples(reference, rows=list(range(12))))
    node = BatchDecode(source, batch_size=4, decode_threads=2, decode_ahead=1)
    next(node)
    assert node._executor is not None and node.stats()["cache"]["open_decoders"] >= 1
    node.shutdown()
    assert node._executor is None and node.stats()["cache"]["open_decoders"] == 0 and source.shut == 1
    node.reset({"source": {"position": 4}})  # usable again: threads and decoders come back on demand
    assert [b["index"].tolist() for b in node] == [[4, 5, 6, 7], [8, 9, 10, 11]]
    node.shutdown()


def test_stats_and_repr(reference):
    node = BatchDecode(ListSource(ref_samples(reference, rows=[5, 6, 7])), batch_size=2, max_decoders=2)
    list(node)
    stats = node.stats()
    assert stats["batches"] == 2 and stats["samples"] == 3 and stats["frames_requested"] == 9
    assert stats["cache"]["misses"] == 1 and stats["cache"]["hit_rate"] > 0
    json.dumps(stats)
    text = repr(node)
    assert "BatchDecode(source=ListSource, batch_size=2" in text and "decode_threads=1" in text
    assert "layout=channels_last" in text and "batches=2" in text


# ---- DataLoader workers ----------------------------------------------------------------------------


def build_for_consumer(root: str, consumer: int, consumers: int) -> BatchDecode:
    meta = open_dataset(root)
    graph = chain(
        meta, consumer=consumer, consumers=consumers, pool_size=2, buffer_size=4, delta_timestamps=DELTAS
    )
    return BatchDecode(graph, batch_size=4, image_dtype=torch.uint8, decode_threads=2)


def _mapping_of(address: int) -> str:
    """The name /proc/self/maps gives the mapping holding ``address`` (``/memfd:...``, ``/dev/shm/...``)."""
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            start, stop = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < stop:
                return fields[5].strip() if len(fields) > 5 else ""
    raise AssertionError(f"{address:#x} is not mapped")


class WorkerBatches(IterableDataset):
    """Each DataLoader worker runs its own graph ending in BatchDecode; it reports, from inside the
    worker, where each batch's tensors live: the cameras in one storage, the tabular tensors in one
    other, both shared, and the memory each is mapped from."""

    def __init__(self, root: str) -> None:
        super().__init__()
        self.root = root

    def __iter__(self):
        info = get_worker_info()
        node = build_for_consumer(self.root, info.id, info.num_workers)
        for batch in node:
            tensors = {key: value for key, value in batch.items() if isinstance(value, torch.Tensor)}
            groups = {"cameras": [tensors.pop(FRONT), tensors.pop(WRIST)], "tabular": list(tensors.values())}
            report = {}
            for group, members in groups.items():
                storages = {t.untyped_storage().data_ptr() for t in members}
                mapped = {_mapping_of(t.untyped_storage().data_ptr()) for t in members}
                report[group] = (len(members) > 1 and all(t.is_shared() for t in members), len(storages), mapped)
            yield info.id, batch, report
        node.shutdown()


def test_batches_from_dataloader_workers_arrive_in_shared_memory(video_dataset):
    loader = StatefulDataLoader(WorkerBatches(str(video_dataset)), batch_size=None, num_workers=2)
    received: dict[int, list[dict[str, Any]]] = {0: [], 1: []}
    for worker, batch, report in loader:
        # allocated in shared memory inside the worker (no second copy), one anonymous memfd per group:
        # no named /dev/shm segment that a worker killed mid-batch could leave behind
        memfd = {"/memfd:streamnodes-batch (deleted)"}
        assert report == {"cameras": [True, 1, memfd], "tabular": [True, 1, memfd]}, report  # tuples arrive as lists
        for key in (FRONT, WRIST):
            assert batch[key].is_shared()
            assert_layout(batch[key], "channels_last")
        assert all(v.is_shared() for v in batch.values() if isinstance(v, torch.Tensor))
        received[int(worker)].append(batch)
    for worker in (0, 1):
        expected = list(build_for_consumer(str(video_dataset), worker, 2))
        assert expected, worker
        assert_batches_equal(received[worker], expected, where=worker)
    assert sum(len(b["index"]) for bs in received.values() for b in bs) == 54
