"""Frames are applied in sequence order: reordered and repeated frames change nothing."""

from __future__ import annotations

import random

import pytest

from tests.devset import assert_file_as_accurate_as_offline
from tests.integration.pod_http import metric
from tests.integration.wire import collect, finals_text, open_session, pcm16_frames
from tests.speech import SENTENCES, conversation, wer
from voxfleet import protocol as p
from voxfleet.protocol import CloseCode

pytestmark = pytest.mark.integration


async def test_reordered_and_duplicated_frames_give_the_same_words(pod_factory):
    pod = pod_factory()
    sentences = SENTENCES[16:18]
    frames = list(enumerate(pcm16_frames(conversation(sentences))))
    rng = random.Random(7)
    shuffled = []
    for i in range(0, len(frames), 8):  # shuffle within windows of 8 frames, well inside the reorder hold
        block = frames[i : i + 8]
        rng.shuffle(block)
        shuffled += block
    duplicates = rng.sample(frames, 20)
    in_order, _ = await send_all(pod.url, frames)
    messages, close_code = await send_all(pod.url, shuffled[: len(shuffled) // 2] + duplicates + shuffled[len(shuffled) // 2 :])
    assert close_code == CloseCode.NORMAL
    # Same audio, same windows: only batch padding may move a word.
    assert wer(finals_text(in_order), finals_text(messages)) <= 0.1, (finals_text(in_order), finals_text(messages))
    assert_file_as_accurate_as_offline(conversation(sentences), " ".join(sentences), finals_text(messages))
    assert not [m for m in messages if m["type"] == "warning"], "a reordered frame was reported as lost"
    assert metric(pod, "voxfleet_pod_frames_duplicate_total") >= 20
    last_ack = [m for m in messages if m["type"] == "ack"][-1]
    assert last_ack["seq"] == len(frames) - 1 and last_ack["committed_seq"] == len(frames) - 1


async def send_all(url, frames):
    ws, _ = await open_session(url)
    for seq, frame in frames:
        await ws.send(p.pack_frame(seq, frame))
    await ws.send(p.encode(p.END))
    return await collect(ws)


async def test_gap_is_reported_and_skipped(pod_factory):
    pod = pod_factory("--max-reorder-frames", "4")
    frames = pcm16_frames(conversation(SENTENCES[18:19]))
    missing = range(10, 13)
    ws, _ = await open_session(pod.url)
    for seq, frame in enumerate(frames):
        if seq not in missing:
            await ws.send(p.pack_frame(seq, frame))
    await ws.send(p.encode(p.END))
    messages, close_code = await collect(ws)
    assert close_code == CloseCode.NORMAL
    gaps = [m for m in messages if m["type"] == "warning" and m["code"] == "gap"]
    assert [(g["first"], g["last"]) for g in gaps] == [(10, 12)]
    assert metric(pod, "voxfleet_pod_frame_gaps_total") == 1  # one gap of three frames
