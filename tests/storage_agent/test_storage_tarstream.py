"""The frame stream's tar members read back with the standard library, as clients read them."""

from __future__ import annotations

import io
import tarfile

from shared.videos import StreamEnd
from services.storage_agent.tarstream import end_members, frame_member, member


def test_members_are_block_aligned():
    for size in (0, 1, 511, 512, 513, 5000):
        assert len(member("x", b"a" * size)) % tarfile.BLOCKSIZE == 0


def test_frames_and_end_read_back_in_stream_mode():
    data = b"".join([
        frame_member(1, 0.0, b"\xff\xd8one\xff\xd9"),
        frame_member(2, 1.0 / 3, b"\xff\xd8two\xff\xd9"),
        end_members(StreamEnd(ok=False, frames=2, error="ffmpeg failed: boom")),
    ])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as archive:
        members = [(info, archive.extractfile(info).read()) for info in archive]
    assert [info.name for info, _ in members] == ["frame_000001.jpg", "frame_000002.jpg", "end.json"]
    assert [info.pax_headers.get("COSMA.t_s") for info, _ in members] == ["0.000000", "0.333333", None]
    assert members[1][1] == b"\xff\xd8two\xff\xd9"
    assert StreamEnd.model_validate_json(members[2][1]) == StreamEnd(ok=False, frames=2, error="ffmpeg failed: boom")
