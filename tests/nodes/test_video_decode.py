"""VideoDecode on real mp4 decoded by torchcodec: bit-exact parity with LeRobot's own decoded values,
errors that name file/episode/timestamps, the dict it returns, its state, and frame identity at every
episode boundary of generated datasets with several episodes per mp4 and several mp4s."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torchdata.nodes import BaseNode, IterableWrapper

from streamnodes.errors import ConfigError, StateError, VideoDecodeError
from streamnodes.format import open_dataset, read_episode_columns
from streamnodes.nodes.video_decode import VideoDecode, to_torch
from streamnodes.types import Sample, VideoQuery
from streamnodes.windows import window

REF_ROOT = Path(__file__).parents[1] / "data" / "lerobot_v3_ref" / "dataset"
CAM = "observation.images.cam"
TABULAR = (
    "index",
    "episode_index",
    "frame_index",
    "task_index",
    "timestamp",
    "task",
    "observation.state",
    "action",
)


class ListSource(BaseNode[Any]):
    """The smallest stateful source: a list and a position."""

    POSITION_KEY = "position"

    def __init__(self, items: list[Any]) -> None:
        super().__init__()
        self.items = items

    def reset(self, initial_state: dict | None = None) -> None:
        super().reset(initial_state)
        self.position = initial_state[self.POSITION_KEY] if initial_state is not None else 0

    def next(self) -> Any:
        if self.position >= len(self.items):
            raise StopIteration
        self.position += 1
        return self.items[self.position - 1]

    def get_state(self) -> dict:
        return {self.POSITION_KEY: self.position}


def ref_samples(reference: dict[str, np.ndarray], *, single: bool = False, rows=None) -> list[Sample]:
    """Samples asking for exactly the timestamps LeRobot asked its decoder for."""
    prefix = "nodelta__" if single else ""
    samples = []
    for i in range(len(reference["index"])) if rows is None else rows:
        episode = int(reference["episode_index"][i])
        data = {
            key: reference[prefix + key][i] if prefix + key in reference else reference[key][i]
            for key in TABULAR
        }
        data["task"] = str(data["task"])
        if not single:
            for key in ("observation.state", "action", CAM):
                data[f"{key}_is_pad"] = reference[f"{key}_is_pad"][i]
        query = VideoQuery(
            key=CAM,
            file=str(REF_ROOT / str(reference[f"{CAM}__video_path"][i])),
            episode_index=episode,
            timestamps=reference[f"{prefix}{CAM}__query_ts"][i],
            single=single,
        )
        samples.append(Sample(episode, int(reference["frame_index"][i]), data, {CAM: query}))
    return samples


def decode_all(samples: list[Sample], **kwargs: Any) -> list[dict[str, Any]]:
    return list(VideoDecode(IterableWrapper(samples), **kwargs))


# ---- parity with LeRobot ---------------------------------------------------------------------------


def test_window_frames_equal_lerobot_bit_for_bit(reference):
    items = decode_all(ref_samples(reference))
    assert len(items) == 237
    for i, item in enumerate(items):
        frames = item[CAM]
        assert frames.shape == (3, 3, 48, 64) and frames.dtype == torch.float32
        assert torch.equal(frames, torch.from_numpy(reference[CAM][i])), f"frame {i}"


def test_single_frames_equal_lerobot_bit_for_bit(reference):
    items = decode_all(ref_samples(reference, single=True))
    for i, item in enumerate(items):
        assert item[CAM].shape == (3, 48, 64)
        assert torch.equal(item[CAM], torch.from_numpy(reference[f"nodelta__{CAM}"][i])), f"frame {i}"


def test_uint8_output_is_the_decoded_bytes(reference):
    items = decode_all(ref_samples(reference), image_dtype=torch.uint8)
    expected = np.round(reference[CAM] * 255).astype(np.uint8)
    for i, item in enumerate(items):
        assert item[CAM].dtype == torch.uint8
        assert torch.equal(item[CAM], torch.from_numpy(expected[i]))
        assert torch.equal(item[CAM].float() / 255, torch.from_numpy(reference[CAM][i]))


def test_tabular_entries_match_lerobot_types(reference):
    (item,) = decode_all(ref_samples(reference, rows=[25]))
    assert set(item) == {*TABULAR, "observation.state_is_pad", "action_is_pad", f"{CAM}_is_pad", CAM}
    for key in ("index", "episode_index", "frame_index", "task_index"):
        assert (
            item[key].dtype == torch.int64
            and item[key].shape == ()
            and item[key].item() == reference[key][25]
        )
    assert item["timestamp"].dtype == torch.float32 and item["timestamp"].shape == ()
    assert item["task"] == reference["task"][25] and isinstance(item["task"], str)
    assert torch.equal(item["observation.state"], torch.from_numpy(reference["observation.state"][25]))
    assert item["action_is_pad"].dtype == torch.bool


def test_to_torch_conversions():
    column = np.arange(12, dtype=np.float32).reshape(4, 3)
    row = to_torch(column[1])  # a view into a resident column: must be copied
    row += 100
    assert column[1, 0] == 3.0
    owned = np.ones(3, dtype=np.int16)
    assert to_torch(owned).dtype == torch.int16
    readonly = np.ones(2)
    readonly.flags.writeable = False
    assert to_torch(readonly).dtype == torch.float64
    assert to_torch(np.array([True, False])).dtype == torch.bool
    assert to_torch(np.int64(3)).dtype == torch.int64 and to_torch(np.int64(3)).shape == ()
    assert to_torch(np.float32(0.5)).dtype == torch.float32
    assert to_torch(np.bool_(True)).dtype == torch.bool
    assert to_torch(7).dtype == torch.int64 and to_torch(0.5).dtype == torch.float32
    assert to_torch(np.str_("pick")) == "pick" and type(to_torch(np.str_("pick"))) is str
    assert to_torch("task") == "task"
    assert to_torch(np.array(["a", "b"])).dtype.kind == "U"
    assert to_torch(np.arange(3, dtype=">i4")).tolist() == [0, 1, 2]


def test_padded_positions_decode_once_and_repeat(reference):
    # Row 19 is the last frame of episode 0: its +0.5 s position is clamped to 1.9 s, as is the 0.0 one.
    (sample,) = ref_samples(reference, rows=[19])
    assert sample.videos[CAM].timestamps.tolist() == pytest.approx([1.7, 1.9, 1.9])
    node = VideoDecode(IterableWrapper([sample]))
    (item,) = list(node)
    assert torch.equal(item[CAM][1], item[CAM][2])
    assert node.stats()["frames_decoded"] == 2 and node.stats()["frames_requested"] == 3
    # Unsorted timestamps come back in the requested order.
    sample.videos[CAM].timestamps = sample.videos[CAM].timestamps[::-1].copy()
    (backwards,) = decode_all([sample])
    assert torch.equal(backwards[CAM], item[CAM].flip(0))


# ---- errors ----------------------------------------------------------------------------------------


def test_timestamp_between_frames_raises_naming_file_episode_and_timestamps(reference):
    (sample,) = ref_samples(reference, rows=[40])
    sample.videos[CAM].timestamps = sample.videos[CAM].timestamps + 0.03
    with pytest.raises(VideoDecodeError) as info:
        decode_all([sample])
    message = str(info.value)
    assert "file-000.mp4" in message and "episode 1" in message and CAM in message
    assert "4.03" in message and "tolerance_s" in message  # requested 4.0 + 0.03; found pts 4.0


def test_timestamp_past_the_end_raises(reference):
    # LeRobot's streaming bug: clamping to to_timestamp asks for one frame past the file's end.
    (sample,) = ref_samples(reference, rows=[236], single=True)
    sample.videos[CAM].timestamps = np.array([23.7])
    with pytest.raises(VideoDecodeError, match=r"episode 5.*23\.7.*237 frames"):
        decode_all([sample])


def test_missing_file_raises_naming_it(reference, tmp_path):
    (sample,) = ref_samples(reference, rows=[0])
    missing = tmp_path / "videos" / "gone.mp4"
    sample.videos[CAM].file = str(missing)
    with pytest.raises(VideoDecodeError, match=r"gone\.mp4 \(episode 0\): video file not found"):
        decode_all([sample])


def test_truncated_file_raises_naming_it(reference, tmp_path):
    data = (REF_ROOT / str(reference[f"{CAM}__video_path"][0])).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    (sample,) = ref_samples(reference, rows=[230])  # frames from the lost second half
    sample.videos[CAM].file = str(cut)
    node = VideoDecode(IterableWrapper([sample]))
    with pytest.raises(
        VideoDecodeError, match=r"cut\.mp4 \(episode 5, camera observation\.images\.cam\).*truncated"
    ):
        next(node)
    assert str(cut) not in node.cache  # the failed decoder is not kept


def test_header_only_file_raises_naming_it(reference, tmp_path):
    data = (REF_ROOT / str(reference[f"{CAM}__video_path"][0])).read_bytes()
    cut = tmp_path / "head.mp4"
    cut.write_bytes(data[:100])
    (sample,) = ref_samples(reference, rows=[3])
    sample.videos[CAM].file = str(cut)
    with pytest.raises(VideoDecodeError, match=r"head\.mp4 \(episode 0\): cannot open"):
        decode_all([sample])


def test_bad_arguments():
    with pytest.raises(ConfigError, match="image_dtype"):
        VideoDecode(IterableWrapper([]), image_dtype=torch.float16)
    with pytest.raises(ConfigError, match="tolerance_s"):
        VideoDecode(IterableWrapper([]), tolerance_s=-1)


# ---- state -----------------------------------------------------------------------------------------


def _equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def test_state_nests_the_source_state(reference):
    node = VideoDecode(ListSource(ref_samples(reference, rows=[0, 1, 2])))
    assert node.state_dict() == {"source": {"position": 0}}
    next(node)
    assert node.state_dict() == {VideoDecode.SOURCE_KEY: {"position": 1}}
    with pytest.raises(StateError, match="source"):
        VideoDecode(ListSource([])).reset({"position": 1})


def test_resume_at_every_position_gives_the_same_items(reference):
    samples = ref_samples(reference, rows=[0, 19, 20, 57, 58, 236])
    node = VideoDecode(ListSource(samples), image_dtype=torch.uint8)
    states, items = [json.loads(json.dumps(node.state_dict()))], []
    for item in node:
        items.append(item)
        states.append(json.loads(json.dumps(node.state_dict())))
    assert len(items) == len(samples)
    for k, state in enumerate(states):
        fresh = VideoDecode(ListSource(samples), image_dtype=torch.uint8)
        fresh.reset(state)
        rest = list(fresh)
        assert len(rest) == len(items) - k and all(
            _equal(x, y) for x, y in zip(rest, items[k:], strict=True)
        ), k


def test_resume_inside_the_full_chain(video_dataset):
    from tests.nodes.helpers import chain

    meta = open_dataset(video_dataset)
    deltas = {key: [-0.2, 0.0, 0.3] for key in meta.video_keys}

    def build() -> VideoDecode:
        return VideoDecode(
            chain(meta, pool_size=2, buffer_size=4, delta_timestamps=deltas), image_dtype=torch.uint8
        )

    node = build()
    states, items = [json.loads(json.dumps(node.state_dict()))], []
    for item in node:
        items.append(item)
        states.append(json.loads(json.dumps(node.state_dict())))
    assert len(items) == meta.total_frames
    for k in (0, 1, 17, len(items) - 1, len(items)):
        fresh = build()
        fresh.reset(states[k])
        rest = list(fresh)
        assert len(rest) == len(items) - k and all(
            _equal(x, y) for x, y in zip(rest, items[k:], strict=True)
        ), k


def test_stats_and_repr(reference):
    node = VideoDecode(IterableWrapper(ref_samples(reference, rows=[5, 6])), max_decoders=2)
    list(node)
    stats = node.stats()
    assert stats["samples"] == 2 and stats["decode_calls"] == 2 and stats["frames_requested"] == 6
    assert stats["cache"]["misses"] == 1 and stats["cache"]["hits"] == 1
    json.dumps(stats)
    assert "VideoDecode(source=IterableWrapper, image_dtype=float32" in repr(node)
    assert "hits=1" in repr(node)


# ---- frame identity on generated datasets ----------------------------------------------------------


@pytest.fixture(scope="module")
def packed_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two episodes per mp4, three mp4s (LeRobot's size-based roll-over with a tiny size limit)."""
    from streamnodes.testing import write_dataset

    root = tmp_path_factory.mktemp("packed") / "ds"
    return write_dataset(
        root,
        episode_lengths=[7, 12, 5, 9, 6, 11],
        fps=10,
        cameras={CAM: (64, 64)},
        video_files_size_in_mb=0.004,
    )


def _queries(meta, ref, columns, rows_by_key) -> Sample:
    videos = {}
    for segment in ref.videos:
        rows = rows_by_key(segment.key)
        timestamps = segment.from_timestamp + columns["timestamp"][rows].astype(np.float64)
        videos[segment.key] = VideoQuery(segment.key, meta.url(segment.path), ref.episode_index, timestamps)
    return Sample(ref.episode_index, 0, {}, videos)


@pytest.mark.parametrize("dataset", ["packed_dataset", "video_dataset"])
def test_every_episode_boundary_decodes_the_right_frame(dataset, request):
    from streamnodes.testing import frame_identity

    meta = open_dataset(request.getfixturevalue(dataset))
    files = {segment.path for ref in meta.episodes for segment in ref.videos}
    per_file = {path: sum(s.path == path for ref in meta.episodes for s in ref.videos) for path in files}
    assert len(files) > len(meta.video_keys) and max(per_file.values()) > 1  # what this test is about

    samples, expected = [], []
    for ref in meta.episodes:
        columns = read_episode_columns(meta, ref, ["timestamp"])
        length = ref.length
        ks = np.array(sorted({0, 1, length - 2, length - 1} & set(range(length))))
        samples.append(_queries(meta, ref, columns, lambda _key, ks=ks: ks))
        expected.append([(ref.episode_index, int(k)) for k in ks])
        # Windows reaching past both ends repeat the boundary frame (the clamped rows).
        offsets = np.array([-3, -1, 0, 1, 3])
        for position in (0, length - 1):
            rows, _ = window(position, length, offsets)
            samples.append(_queries(meta, ref, columns, lambda _key, rows=rows: rows))
            expected.append([(ref.episode_index, int(r)) for r in rows])
    items = decode_all(samples, image_dtype=torch.uint8)
    for sample, item, want in zip(samples, items, expected, strict=True):
        for key in sample.videos:
            got = [frame_identity(frame) for frame in item[key]]
            assert got == want, (key, sample.episode_index)


def test_expand_equals_index_select_on_decoder_output() -> None:
    """The numpy gather used to repeat padded positions gives index_select's values and shape."""
    from torchcodec.decoders import VideoDecoder

    from streamnodes.nodes.video_decode import _expand

    path = "tests/data/lerobot_v3_ref/dataset/videos/observation.images.cam/chunk-000/file-000.mp4"
    frames = VideoDecoder(path, seek_mode="approximate").get_frames_at([0, 3, 7]).data  # NCHW view of NHWC
    positions = [0, 0, 1, 2, 2, 1]
    got = _expand(frames, positions)
    assert got.shape == (6, *frames.shape[1:])
    assert torch.equal(got, frames.index_select(0, torch.tensor(positions)))
    contiguous = frames.contiguous()  # the fallback path
    assert torch.equal(_expand(contiguous, positions), contiguous.index_select(0, torch.tensor(positions)))
