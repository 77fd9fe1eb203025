"""RunOptions: infer's options, checked once when made (the CLI and the Python API alike)."""

from __future__ import annotations

import numpy as np
import pytest

from dronseg_edge.errors import DronsegError
from dronseg_edge.pipeline.run_options import RunOptions, class_list


def test_classes_are_names_or_indices():
    assert class_list("person,3, road ,11") == ("person", 3, " road ", 11)  # names are stripped by select_classes
    assert RunOptions(classes=class_list("1,3")).classes == (1, 3)


@pytest.mark.parametrize("changes, message", [
    ({"max_duration": 0.0}, "--max-duration-s 0.0 must be above 0 seconds"),
    ({"segment_s": float("nan")}, "--segment-s nan must be above 0 seconds"),
    ({"min_free_mb": -1.0}, "--min-free-mb -1.0 must be 0 (no floor) or more MB"),
    ({"classes": (" ",)}, "--classes is empty"),
    ({"codec": "x265"}, "--codec 'x265' is not one of auto"),
    ({"stride": 0}, "--stride 0 must be a whole number, at least 1"),
    ({"stride": 2.5}, "--stride 2.5 must be a whole number"),  # read every 2nd frame, summary.json said 2.5
    ({"max_frames": 2.5}, "--max-frames 2.5 must be a whole number"),  # the run folder, then "a bug" (islice)
    ({"stride": True}, "--stride True must be a whole number"),  # was taken as 1, as whole() refuses it elsewhere
    ({"max_frames": "2"}, "--max-frames '2' must be a whole number"),
    ({"max_pixels": 0}, "--max-pixels 0 must be a whole number"),
    ({"alpha": "0.5"}, "--alpha '0.5' must be a number"),  # text where a float belongs: a TypeError traceback
    ({"reconnect_s": "1"}, "--reconnect-s '1' must be a number"),
    ({"max_duration": "5"}, "--max-duration-s '5' must be a number"),
    ({"segment_s": True}, "--segment-s True must be a number"),  # was taken as 1 s
    ({"min_free_mb": None}, "--min-free-mb None must be a number"),
    ({"live": "false"}, "--live 'false' is not one of True, False, None"),  # was true: a video read live
    ({"show": "no"}, "--show 'no' is not one of True, False"),  # was true: a window opened
])
def test_bad_values_name_their_option(changes, message):
    with pytest.raises(DronsegError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RunOptions(**changes)



def test_numpy_counts_are_kept_as_ints():
    # summary.json wrote them as strings ("stride": "2"): its JSON writer turns what it cannot write into str
    options = RunOptions(stride=np.int64(2), max_frames=np.int32(5), max_pixels=np.int64(9000))
    assert (type(options.stride), type(options.max_frames)) == (int, int) and (options.stride, options.max_frames) == (2, 5)
    assert type(options.max_pixels) is int and options.max_pixels == 9000


def test_one_stream_url_given_as_a_string_is_one_url():
    # it was taken character by character: "--stream-out 'u': not a stream URL this can send"
    assert RunOptions(stream_out="udp://127.0.0.1:5600").stream_out == ("udp://127.0.0.1:5600",)
