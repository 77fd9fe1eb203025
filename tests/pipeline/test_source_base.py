"""shown_url: how a source or target is named in logs, errors and outputs, its secrets masked."""

from __future__ import annotations

import pytest

from dronseg_edge.pipeline.source_base import shown_url


@pytest.mark.parametrize("given, shown", [
    ("rtsp://admin:hunter2@cam/1", "rtsp://admin:***@cam/1"),
    ("rtsp://cam/1?pwd=hunter2", "rtsp://cam/1?pwd=***"),  # Foscam-style cameras
    ("http://cam/video.cgi?user=admin&password=hunter2&res=1", "http://cam/video.cgi?user=admin&password=***&res=1"),
    ("rtsp://cam/1?channel=1&Token=hunter2#x", "rtsp://cam/1?channel=1&Token=***#x"),
    ("srt://cam:9000?mode=caller&passphrase=hunter2", "srt://cam:9000?mode=caller&passphrase=***"),
    ("rtspsrc location=rtsp://cam/1 user-id=admin user-pw=hunter2 ! decodebin",
     "rtspsrc location=rtsp://cam/1 user-id=admin user-pw=*** ! decodebin"),
    ('souphttpsrc location="http://cam/x?key=hunter2" proxy-pw="hunter 2" ! jpegdec',
     'souphttpsrc location="http://cam/x?key=***" proxy-pw=*** ! jpegdec'),
    ("rtsp://cam/1?monkey=1&keyframes=2", "rtsp://cam/1?monkey=1&keyframes=2"),  # not secrets: kept
])
def test_secrets_in_a_url_or_pipeline_are_masked(given, shown):
    assert shown_url(given) == shown


@pytest.mark.parametrize("what, given", [("--stream-out", "udp://[::1:5600"), ("--stream-out", "rtsp://[zz]/drone"),
                                         ("--results", "udp://[::1:14600"), ("source", "file://[x/y.mp4"),
                                         ("source", "csi://[0"), ("--preview", "[::1"), ("--preview", "[zz]:80")])
def test_a_bracket_left_open_in_a_url_is_one_line_naming_the_option(what, given):
    """urlsplit's ValueError ('Invalid IPv6 URL') was a traceback, where a mistyped URL is one error line."""
    from dronseg_edge.errors import DronsegError
    from dronseg_edge.pipeline.live_targets import parse_preview, parse_results_target, parse_stream_url
    from dronseg_edge.pipeline.source_spec import open_source

    parse = {"--stream-out": parse_stream_url, "--results": parse_results_target, "source": open_source,
             "--preview": parse_preview}[what]  # --preview [::1 said "a preview on : can be watched..."
    with pytest.raises(DronsegError, match=rf"^{what} '.*': .*brackets hold an IPv6 address"):
        parse(given)
