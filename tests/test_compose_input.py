"""``rtc-recorder compose`` given what is not a finalized room recording (a clear error,
never a crash), and its pure parts: the layouts, the speaker's hysteresis, the drawing."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from rtc_recorder.cli import main as cli_main
from rtc_recorder.compose import (
    CompositionError,
    NotFinalized,
    Rect,
    SpeakerSelector,
    compose,
    fit,
    grid_cells,
    speaker_cells,
)
from rtc_recorder.compose.command import ProgressView
from rtc_recorder.compose.drawing import text_mask, yuv

from .media import ffmpeg_errors, probe
from .room_folder import manifest, participant, room_folder


@pytest.mark.parametrize(
    ("content", "files", "message"),
    [
        ("{not json", (), "cannot be read as JSON"),
        ([1, 2], (), "must be a JSON object"),
        (manifest(state="recording"), ("a.webm", "mix.ogg"), "is not finalized"),
        (manifest(duration="long"), (), "'duration' must be a number"),
        (manifest(duration=-1), (), "'duration' must be a number of at least 0"),
        (manifest(participants=None), (), "'participants' must be a list"),
        (
            manifest(participants=[participant(start="soon")]),
            (),
            "participants[0]: 'start' must be a number",
        ),
        (
            manifest(participants=[participant(start=1.5, end=1.0)]),
            (),
            "participants[0]: 'end' must be a number of at least 1.5",
        ),
        (
            manifest(participants=[participant(file="../elsewhere.webm")]),
            (),
            "'file' must be the name of a file in the recording's folder",
        ),
        (
            manifest(participants=[participant(kinds=["screen"])]),
            (),
            "'kinds' must be a list of 'audio', 'video'",
        ),
        (manifest(cuts=[{"at": 1.0}]), (), "cuts[0]: 'removed' must be a number"),
        (manifest(events=[{"type": "join"}]), (), "events[0]: 't' must be a number"),
        (manifest(), ("mix.ogg",), "the file of participant 'Ada', a.webm, is missing"),
        (manifest(), ("a.webm",), "the mix, mix.ogg, is missing"),
        (manifest(), ("a.webm", "mix.ogg"), "a.webm cannot be read"),
    ],
)
def test_what_is_not_a_finalized_room_recording_is_a_clear_error(
    tmp_path: Path, content: object, files: tuple[str, ...], message: str
) -> None:
    folder = room_folder(tmp_path, content, files)
    with pytest.raises(CompositionError) as error:
        compose(folder, size=(64, 36))
    assert message in str(error.value)
    assert sorted(p.name for p in folder.iterdir()) == sorted(["manifest.json", *files])


def test_a_recording_still_being_made_is_not_finalized(tmp_path: Path) -> None:
    folder = room_folder(tmp_path, manifest(state="recording"), ("a.webm", "mix.ogg"))
    with pytest.raises(NotFinalized):
        compose(folder)


def test_a_folder_that_is_not_a_room_recording_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CompositionError, match=r"has no manifest\.json"):
        compose(tmp_path)
    with pytest.raises(CompositionError, match="is not a folder"):
        compose(tmp_path / "nothing")
    (tmp_path / "call.webm").write_bytes(b"")
    with pytest.raises(CompositionError, match="is not a folder"):
        compose(tmp_path / "call.webm")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"layout": "mosaic"}, "layout must be one of grid, speaker"),
        ({"size": (641, 360)}, "the size must be even"),
        ({"fps": 0}, "fps must be between 1 and 120"),
        ({"output": "out.avi"}, "the output must end in .mp4 or .webm"),
        ({"output": "a.webm"}, "is a file of the recording itself"),
    ],
)
def test_bad_options_are_a_clear_error(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    folder = room_folder(tmp_path, manifest(), ("a.webm", "mix.ogg"))
    if "output" in options:
        options = {**options, "output": folder / options["output"]}
    with pytest.raises(CompositionError, match=message):
        compose(folder, **options)


def test_a_room_nobody_joined_is_an_empty_picture_of_its_duration(tmp_path: Path) -> None:
    folder = room_folder(tmp_path, manifest(participants=[], mix=None, duration=1.0))
    path = compose(folder)
    assert path == folder / "composite-grid.mp4"
    assert not ffmpeg_errors(path)
    info = probe(path)
    assert set(info) == {"video"} and (info["video"].width, info["video"].height) == (1280, 720)
    assert len(info["video"].frames) == 30 and abs(info["video"].end - 1.0) < 1e-3


def test_a_participant_whose_video_stops_for_two_seconds_shows_their_name(
    tmp_path: Path,
) -> None:
    folder = room_folder(
        tmp_path,
        manifest(participants=[participant(kinds=["video"], end=4.0)], mix=None, duration=4.0),
    )
    red = np.full((48, 64, 3), (200, 40, 40), np.uint8)
    with av.open(str(folder / "a.webm"), "w", format="webm") as output:
        stream = output.add_stream("libvpx", rate=30)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in [*range(30), *range(105, 120)]:  # pictures for 0-1 s and 3.5-4 s
            frame = av.VideoFrame.from_ndarray(red, format="rgb24")
            frame.pts = index
            output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    path = compose(folder, size=(160, 90), fps=10)
    with av.open(str(path)) as container:
        shown = {
            round(float(frame.time or 0.0), 1): frame.to_ndarray(format="rgb24")[20, 80]
            for frame in container.decode(video=0)
        }
    red_at = [t for t, pixel in shown.items() if abs(int(pixel[0]) - 200) < 40 and pixel[1] < 90]
    name_at = [
        t for t, pixel in shown.items() if np.abs(pixel.astype(int) - (52, 58, 72)).max() < 20
    ]
    # the last picture stays up to 2 s after it came, then the name until pictures come again
    assert min(red_at) == 0.0 and max(t for t in red_at if t < 3) == 2.9
    assert name_at == [3.0, 3.1, 3.2, 3.3, 3.4], name_at
    assert min(t for t in red_at if t > 3) == 3.5


def test_the_command_reports_bad_input_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = room_folder(tmp_path, manifest(state="paused"), ("a.webm", "mix.ogg"))
    assert cli_main(["compose", str(folder)]) == 1
    error = capsys.readouterr().err
    assert error.startswith("rtc-recorder compose: ") and "is not finalized" in error
    assert len(error.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_:
        cli_main(["compose", str(folder), "--size", "big"])
    assert exit_.value.code == 2


def test_the_bar_is_redrawn_in_place_at_most_ten_times_a_second() -> None:
    screen = io.StringIO()
    view = ProgressView("bar", screen)
    for step in range(1, 21):  # 20 updates within 0.2 s
        view.update(step / 10, 2.0, now=step / 100)
    view.finish()
    drawn = screen.getvalue().split("\r")[1:]
    assert len(drawn) == 3, drawn  # at 0 s, 0.1 s, and the last
    assert drawn[0].startswith("[" + "#" * 2 + "." * 28 + "]   5%  0.1 of 2.0 s")
    assert drawn[-1] == "[" + "#" * 30 + "] 100%  2.0 of 2.0 s\n"


# -- layouts ------------------------------------------------------------------------------


def _overlap(a: Rect, b: Rect) -> bool:
    return (
        a.x < b.x + b.width
        and b.x < a.x + a.width
        and a.y < b.y + b.height
        and b.y < a.y + a.height
    )


@pytest.mark.parametrize("size", [(1280, 720), (640, 360), (720, 1280), (322, 182)])
@pytest.mark.parametrize("count", range(1, 10))
def test_grid_cells_are_equal_apart_inside_and_even(size: tuple[int, int], count: int) -> None:
    width, height = size
    cells = grid_cells(count, width, height, gap=4)
    assert len(cells) == count
    assert len({(c.width, c.height) for c in cells}) == 1
    for cell in cells:
        assert cell.x >= 0 and cell.x + cell.width <= width
        assert cell.y >= 0 and cell.y + cell.height <= height
        assert all(value % 2 == 0 for value in (cell.x, cell.y, cell.width, cell.height))
    assert not any(_overlap(a, b) for a, b in itertools.combinations(cells, 2))


def test_grid_rows_fill_a_wide_picture() -> None:
    def rows(count: int) -> list[int]:
        cells = grid_cells(count, 1280, 720)
        return [len(list(group)) for _, group in itertools.groupby(cells, key=lambda c: c.y)]

    assert [rows(n) for n in range(1, 8)] == [[1], [2], [2, 1], [2, 2], [3, 2], [3, 3], [3, 3, 1]]
    two = grid_cells(2, 640, 360)
    assert two[0].x < 320 <= two[1].x and two[0].y == two[1].y
    three = grid_cells(3, 640, 360)
    assert three[2].x + three[2].width // 2 == 320  # the last row centred


@pytest.mark.parametrize("count", range(1, 8))
def test_the_speakers_cell_is_the_large_one(count: int) -> None:
    cells = speaker_cells(count, 1280, 720, gap=8)
    main, others = cells[0], cells[1:]
    assert main.width * main.height > 4 * max((c.width * c.height for c in others), default=0)
    assert all(c.y >= main.y + main.height for c in others)
    assert not any(_overlap(a, b) for a, b in itertools.combinations(cells, 2))
    assert all(c.x >= 0 and c.x + c.width <= 1280 and c.y + c.height <= 720 for c in cells)


def test_a_picture_is_fitted_whole_and_centred() -> None:
    cell = Rect(100, 50, 400, 400)
    area = fit(640, 480, cell)
    assert (area.width, area.height) == (400, 300)
    assert (area.x, area.y) == (100, 100)
    tall = fit(480, 640, Rect(0, 0, 640, 360))
    assert tall.height == 360 and abs(tall.width / tall.height - 0.75) < 0.01
    assert tall.x == (640 - tall.width) // 2 // 2 * 2


# -- the active speaker -------------------------------------------------------------------


def run(selector: SpeakerSelector, steps: list[tuple[float, dict[str, float]]]) -> list[str | None]:
    return [selector.choose(t, levels, sorted(levels)) for t, levels in steps]


def test_the_speaker_changes_only_after_the_other_has_been_louder_for_a_while() -> None:
    quiet, loud = -70.0, -20.0
    steps = [(t / 10, {"a": loud, "b": quiet}) for t in range(10)]
    # b speaks up for 0.4 s: not enough
    steps += [(1.0 + t / 10, {"a": quiet, "b": loud}) for t in range(4)]
    steps += [(1.4 + t / 10, {"a": loud, "b": quiet}) for t in range(5)]
    # b talks on: it takes the picture once it has led for 0.6 s
    steps += [(2.0 + t / 10, {"a": quiet, "b": loud}) for t in range(10)]
    chosen = run(SpeakerSelector(hold=0.6), steps)
    assert chosen[:19] == ["a"] * 19
    switch = next(i for i, who in enumerate(chosen) if who == "b")
    assert math.isclose(steps[switch][0], 2.6) and set(chosen[switch:]) == {"b"}


def test_a_speaker_only_a_little_louder_does_not_take_the_picture() -> None:
    steps = [(t / 10, {"a": -30.0, "b": -26.0}) for t in range(30)]
    selector = SpeakerSelector(current="a")
    assert set(run(selector, steps)) == {"a"}


def test_silence_does_not_take_the_picture_and_a_speaker_who_leaves_is_replaced() -> None:
    selector = SpeakerSelector()
    assert selector.choose(0.0, {"a": -90.0, "b": -80.0}, ["a", "b"]) == "a"  # all quiet
    assert selector.choose(0.1, {"a": -90.0, "b": -80.0}, ["a", "b"]) == "a"
    assert selector.choose(5.0, {"a": -90.0, "b": -80.0}, ["a", "b"]) == "a"
    assert selector.choose(5.1, {"b": -30.0, "c": -20.0}, ["b", "c"]) == "c"  # a left
    assert selector.choose(5.2, {}, []) is None


# -- drawing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "colour", [(255, 255, 255), (0, 0, 0), (255, 0, 0), (0, 255, 0), (0, 0, 255), (52, 58, 72)]
)
def test_colours_are_converted_as_ffmpeg_does(colour: tuple[int, int, int]) -> None:
    picture = np.empty((16, 16, 3), np.uint8)
    picture[:] = colour
    converted = av.VideoFrame.from_ndarray(picture, format="rgb24").reformat(format="yuv420p")
    flat = converted.to_ndarray().reshape(-1)  # Y (16 x 16), then U and V (8 x 8 each)
    assert all(abs(int(flat[i]) - c) <= 1 for i, c in zip((0, 256, 320), yuv(colour), strict=True))


@pytest.mark.parametrize("name", ["Ada", "Zoë Ångström", "李小龍", "a" * 200])
def test_names_are_drawn_within_their_width(name: str) -> None:
    mask = text_mask(name, 24, 300)
    assert 0 < mask.shape[1] <= 300 and mask.shape[0] > 0
    assert float(mask.max()) > 0.9 and float(np.mean(mask)) < 0.8
