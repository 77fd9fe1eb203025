"""What README.md and docs/*.md claim that a test can keep true: every option of a documented command line
exists under the name --help shows (old spellings only where the docs call them that), and every test file
and test the docs cite as proof exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
COMMAND_LINE = re.compile(r"(?:dronseg-edge|-m dronseg_edge) (synth|train|eval|submit|export|parity|infer|bench|checks)\b"
                          r"([^`#|]*)")
OPTION = re.compile(r"(?<![\w-])(--?[a-zA-Z][\w-]*)")
TEST_REFERENCE = re.compile(r"`(?:(tests/[\w/]+\.py|[\w/]*test_\w+\.py)(?:::(\w+))?|::(\w+))")


def doc_lines():
    """(doc, line number, text) with shell continuations (a trailing backslash) joined."""
    for doc in DOCS:
        pending, start = "", 0
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            start = start if pending else number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield doc.name, start, pending + line
            pending = ""


def doc_sentences():
    """(doc, sentence) of the prose, and each table row whole."""
    for doc in DOCS:
        for block in doc.read_text().split("\n\n"):
            rows = block.splitlines()
            units = rows if rows and rows[0].startswith("|") else re.split(r"(?<=\.) ", " ".join(rows))
            yield from ((doc.name, unit) for unit in units)


@pytest.fixture(scope="module")
def options() -> tuple[dict[str, set[str]], set[str]]:
    """(each command's options as --help shows them, the old spellings it hides)."""
    import typer.main

    from dronseg_edge.cli import app

    commands = typer.main.get_command(app).commands
    shown = {name: {"-h", "--help"} | {o for p in c.params if not p.hidden for o in p.opts + p.secondary_opts}
             for name, c in commands.items()}
    return shown, {o for c in commands.values() for p in c.params if p.hidden for o in p.opts}


def test_documented_command_lines_use_options_the_commands_show(options):
    shown, old = options
    wrong = [f"{doc}:{number}: {command} {option}" for doc, number, line in doc_lines()
             for command, rest in COMMAND_LINE.findall(line) for option in OPTION.findall(rest)
             if option not in shown[command]]
    wrong += [f"{doc}: {option} (an old spelling) in '{sentence[:80]}...'" for doc, sentence in doc_sentences()
              for option in re.findall(r"`(--[\w-]+)", sentence)
              if option in old and not re.search(r"spelling|formerly", sentence)]
    assert not wrong, "\n".join(wrong)


def test_every_test_the_docs_cite_exists():
    tests = {path: path.read_text() for path in (ROOT / "tests").rglob("*.py")}
    missing = []
    for doc, number, line in doc_lines():
        files = None
        for path, name, same_file_name in TEST_REFERENCE.findall(line):
            if path:
                files = [p for p in tests if p.as_posix().endswith("/" + path.removeprefix("tests/"))]
                missing += [] if files else [f"{doc}:{number}: {path}"]
            name = name or same_file_name
            if name and files and not any(re.search(rf"def {name}\b", tests[p]) for p in files):
                missing.append(f"{doc}:{number}: {name} in {path or 'the file before'}")
    assert not missing, "\n".join(missing)


def test_every_suggested_systemd_unit_counts_the_exit_after_a_stop_as_success():
    """SIGTERM exits 130, a failure to systemd unless SuccessExitStatus=130: `systemctl stop` left the unit failed."""
    for doc in DOCS:
        text = " ".join(doc.read_text().replace("`", "").split())
        assert text.count("RestartPreventExitStatus=2 3 4") == text.count("SuccessExitStatus=130"), doc.name


def test_the_sources_table_says_every_url_is_read_live_by_default():
    """jetson.md said an HTTP file is not read live, but every URL is (StreamSource): `infer M http://h/clip.mp4`
    segments 3 of its 12 frames unless --no-live."""
    from dronseg_edge.pipeline.sources import StreamSource

    row = next(line for _, _, line in doc_lines() if line.startswith("| `rtsp://...`, `http://...`"))
    live = row.split(" | ")[2]
    assert StreamSource.live_default and live.startswith("yes") and "no" not in live.replace("--no-live", ""), live


def test_the_readme_says_a_frames_file_is_compared_with_its_checkpoint_only():
    """README's parity line said 'any two artifacts', but a --io frames file is refused as the reference or beside
    another file (tests/export/test_parity.py::test_a_frames_graph_is_compared_with_its_checkpoint_only)."""
    line = next(text for doc, _, text in doc_lines() if doc == "README.md" and "dronseg-edge parity REF" in text)
    assert "--io frames file only against its checkpoint" in line, line


def test_the_install_section_says_a_jetson_encodes_with_its_gstreamer_encoder_first():
    """README said PyAV's missing NVENC made `infer` encode with libx264 on a Jetson, but --codec auto takes JetPack's
    GStreamer encoder first (test_video_writer.py::test_a_jetson_writes_through_its_gstreamer_encoder_first)."""
    sentence = next(s for doc, s in doc_sentences() if doc == "README.md" and "`video` (PyAV" in s)
    assert "GStreamer encoder first" in sentence, sentence


def test_the_export_files_table_lists_the_parity_picture():
    """export.md's Files table left out NAME.parity.png, the difference picture written beside a failed or
    borderline parity report (reliability.md names it)."""
    from dronseg_edge.export.parity_picture import picture_path
    from dronseg_edge.export.parity_report import parity_report_path

    table = (ROOT / "docs" / "export.md").read_text().split("## Files", 1)[1].split("\n## ", 1)[0]
    report = parity_report_path(Path("best_fp16.onnx"))
    for name in (report.name, picture_path(report).name):
        assert f"`<artifact stem>{name.removeprefix('best_fp16')}`" in table, name
