"""--stream-out URLs, --preview addresses and tokens, --results targets, the SDP: checked when RunOptions is made."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dronseg_edge.errors import DronsegError, RuntimeFailure
from dronseg_edge.pipeline import RunOptions
from dronseg_edge.pipeline.live_targets import (check_preview, is_loopback, parse_preview, parse_results_target,
                                                parse_stream_url, parse_stream_urls, resolve_udp, sdp_text)


def test_stream_urls():
    qgc = parse_stream_url("rtp://192.168.1.10:5600")
    assert (qgc.kind, qgc.host, qgc.port, qgc.url, qgc.sdp_name) == ("rtp", "192.168.1.10", 5600, "rtp://192.168.1.10:5600",
                                                                      "stream_5600.sdp")
    assert parse_stream_url("UDP://[::1]:5600/").url == "udp://[::1]:5600"
    rtsp = parse_stream_url("rtsp://mediamtx.local:8554/drone/live")
    assert (rtsp.kind, rtsp.port, rtsp.url) == ("rtsp", 8554, "rtsp://mediamtx.local:8554/drone/live")
    assert parse_stream_url("rtsp://server/drone").port == 554


def test_rtp_targets_sharing_a_port_get_an_sdp_file_each():
    """Two ground stations on QGroundControl's port 5600: one stream_5600.sdp held the second's address only."""
    targets = parse_stream_urls(("rtp://10.0.0.1:5600", "rtp://[fe80::1]:5600", "rtp://gcs:5602", "udp://gcs:5600"))
    assert [t.sdp_name for t in targets[:3]] == ["stream_10.0.0.1_5600.sdp", "stream_fe80--1_5600.sdp", "stream_5602.sdp"]


@pytest.mark.parametrize("url, message", [
    ("http://x:1", "not a stream URL"), ("udp://:5600", "no host"), ("udp://host", "no port"),
    ("rtp://host:99999", "not a number in 1..65535"), ("rtsp://server:8554", "needs a path"),
    ("udp://host:5600/x", "HOST:PORT only"), ("rtp://ho st:5600", "not a host name"),
    ("udp://pilot:s3cret@host:5600", r"'udp://pilot:\*\*\*@host:5600'.*UDP takes no user or password"),
    ("rtp://pilot@host:5600", "RTP takes no user or password"),
])
def test_bad_stream_urls_are_one_line_naming_the_value(url, message):
    with pytest.raises(DronsegError, match=message):
        RunOptions(stream_out=(url,))


def test_stream_settings_and_duplicates_are_checked():
    with pytest.raises(DronsegError, match="given twice"):
        RunOptions(stream_out=("udp://h:5600", "UDP://h:5600"))
    with pytest.raises(DronsegError, match="rtp://h:5600 is given twice"):  # one UDP port: MPEG-TS and RTP mixed
        RunOptions(stream_out=("udp://h:5600", "rtp://h:5600"))
    with pytest.raises(DronsegError, match="--results udp://h:5600 is also a --stream-out destination"):
        RunOptions(stream_out=("rtp://h:5600",), results="udp://h:5600")  # JSON lines into the video's port
    with pytest.raises(DronsegError, match="--stream-bitrate-kbps 10 must be"):
        RunOptions(stream_out=("udp://h:5600",), stream_bitrate_kbps=10)
    with pytest.raises(DronsegError, match="--stream-what 'mask'"):
        RunOptions(stream_what="mask")
    with pytest.raises(DronsegError, match="--stream-size"):
        RunOptions(stream_size="big")
    assert RunOptions(stream_out=["udp://h:5600"]).stream_out == ("udp://h:5600",)


def test_the_sdp_names_the_receiver_and_h264_on_payload_96():
    text = sdp_text(parse_stream_url("rtp://127.0.0.1:5600"))
    lines = text.splitlines()
    assert "c=IN IP4 127.0.0.1" in lines and "m=video 5600 RTP/AVP 96" in lines
    assert "a=rtpmap:96 H264/90000" in lines and "a=fmtp:96 packetization-mode=1" in lines
    assert "c=IN IP6 ::1" in sdp_text(parse_stream_url("rtp://[::1]:5600"))


def test_preview_addresses_and_the_token_rule():
    assert parse_preview("8080") == ("127.0.0.1", 8080)
    assert parse_preview("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_preview("[::1]:0") == ("::1", 0)
    assert is_loopback("localhost") and is_loopback("127.0.0.2") and is_loopback("::1") and not is_loopback("0.0.0.0")
    assert check_preview("0.0.0.0:8080", "long-enough") == ("0.0.0.0", 8080)
    with pytest.raises(DronsegError, match="anyone who reaches this machine: add --preview-token"):
        RunOptions(preview="0.0.0.0:8080")
    with pytest.raises(DronsegError, match="at least 8 characters"):
        RunOptions(preview="8080", preview_token="short")
    with pytest.raises(DronsegError, match="needs --preview"):
        RunOptions(preview_token="long-enough")
    with pytest.raises(DronsegError, match="give a port"):
        RunOptions(preview="host:port")


def test_results_targets():
    assert parse_results_target("-") == ("stdout", None)
    assert parse_results_target("udp://127.0.0.1:14600") == ("udp", ("127.0.0.1", 14600))
    assert parse_results_target("out/r.jsonl") == ("file", Path("out/r.jsonl"))
    with pytest.raises(DronsegError, match="--results 'tcp://h:1'"):
        RunOptions(results="tcp://h:1")
    with pytest.raises(DronsegError, match="--results is empty: give udp://HOST:PORT"):
        RunOptions(results=" ")


def test_a_password_in_a_target_is_never_shown():
    target = parse_stream_url("rtsp://pilot:s3cret@server:8554/drone")
    assert target.name == "rtsp://pilot:***@server:8554/drone" and "s3cret" in target.url  # the URL still opens it
    for given, option in ((("rtsp://u:s3cret@h/a", "rtsp://u:s3cret@h/a"), "stream_out"), ("udp://u:s3cret@h:1", "results"),
                          ("tcp://u:s3cret@h:1", "results"), (("rtsp://u:s3cret@h",), "stream_out")):
        with pytest.raises(DronsegError) as error:
            RunOptions(**{option: given})
        assert "s3cret" not in str(error.value) and "u:***@h" in str(error.value)


def test_a_results_host_the_dns_cannot_answer_for_now_is_exit_5(monkeypatch):
    """At boot before the network is up: exit 2 told systemd (RestartPreventExitStatus=2) never to restart."""
    def no_answer(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_answer)
    with pytest.raises(RuntimeFailure, match="host gcs cannot be looked up now") as caught:
        resolve_udp("udp://gcs:14600", "gcs", 14600)
    assert caught.value.exit_code == 5
