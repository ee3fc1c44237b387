"""The `xmodal` command through click's CliRunner, with the fake colour encoder."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import COLOURS, draw
from xmodal.engine.cli.main import cli


@pytest.fixture
def run(library):
    runner = CliRunner()

    def invoke(*args, lib=True):
        extra = ["--library", str(library)] if lib else []
        return runner.invoke(cli, [*args, *extra], catch_exceptions=False)

    return invoke


def test_index_then_search_by_text_and_image_as_json(run, photos):
    out = run("index", str(photos), "--model", "fake-colour", "--json")
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert (report["indexed"], report["unchanged"], report["removed"], report["skipped"]) == (4, 0, 0, [])

    hits = json.loads(run("search", "blue", "-k", "2", "--json").stdout)
    assert [set(h) - {"matched"} for h in hits] == [{"rank", "score", "id", "path"}] * 2
    assert Path(hits[0]["path"]).name == "blue.jpg"
    assert hits[0]["matched"]["words"] == ["blue"]  # its file name holds the word
    assert hits[0]["matched"]["name"].endswith("photos blue")

    hits = json.loads(run("search", "--image", str(photos / "green.png"), "-k", "1", "--json").stdout)
    assert Path(hits[0]["path"]).name == "green.png"


def test_second_index_run_reports_unchanged(run, photos):
    run("index", str(photos), "--model", "fake-colour")
    report = json.loads(run("index", str(photos), "--model", "fake-colour", "--json").stdout)
    assert (report["indexed"], report["unchanged"]) == (0, 4)


def test_texts_from_csv_answer_image_and_text_queries(run, photos, tmp_path):
    csv = tmp_path / "captions.csv"
    csv.write_text('image,caption\na.jpg,"a red bus, parked"\nb.jpg,a purple flower\n')
    run("index", str(photos), "--model", "fake-colour")
    out = run("index-texts", str(csv), "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["indexed"] == 2
    hits = json.loads(run("search", "--image", str(photos / "red.jpg"), "--target", "texts", "--json").stdout)
    assert hits[0]["text"] == "a red bus, parked" and "path" not in hits[0]
    hits = json.loads(run("search", "purple", "--target", "texts", "-k", "1", "--json").stdout)
    assert hits[0]["text"] == "a purple flower"


def test_table_output_lists_paths(run, photos):
    run("index", str(photos), "--model", "fake-colour")
    out = run("search", "yellow", "-k", "1")
    assert out.exit_code == 0 and "yellow.webp" in out.stdout


def test_info_json(run, photos):
    run("index", str(photos), "--model", "fake-colour")
    info = json.loads(run("info", "--json").stdout)
    assert info["images"] == 4 and info["texts"] == 0 and info["model"] == "fake-colour"
    assert info["indexes"]["images"]["factory"] == "Flat"


def test_library_from_environment_variable(photos, library, monkeypatch):
    monkeypatch.setenv("XMODAL_LIBRARY", str(library))
    runner = CliRunner()
    assert runner.invoke(cli, ["index", str(photos), "--model", "fake-colour"]).exit_code == 0
    assert (library / "library.db").exists()


def test_skipped_files_are_listed_and_the_run_still_succeeds(run, photos):
    (photos / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    out = run("index", str(photos), "--model", "fake-colour", "--json")
    assert out.exit_code == 0
    skipped = json.loads(out.stdout)["skipped"]
    assert [Path(s["path"]).name for s in skipped] == ["broken.jpg"] and skipped[0]["reason"]
    human = run("index", str(photos), "--model", "fake-colour")
    assert "skipped" in human.stdout and "broken.jpg" in human.stdout


@pytest.mark.parametrize("args, message", [
    (("search", "red"), "no xmodal library"),
    (("info",), "no xmodal library"),
    (("index", ".", "--model", "nope"), "unknown model 'nope'"),
])
def test_errors_are_one_line_with_non_zero_exit(run, args, message):
    out = run(*args)
    assert out.exit_code == 1
    assert message in out.output and len(out.output.strip().splitlines()) == 1


def test_usage_errors_exit_2(run, photos):
    run("index", str(photos), "--model", "fake-colour")
    assert run("search").exit_code == 2
    queries = photos.parent / "queries.txt"
    queries.write_text("red\n")
    assert run("search", "--queries", str(queries), "--image", str(photos / "red.jpg")).exit_code == 2
    assert run("search", "red", "--queries", str(queries)).exit_code == 2  # (a QUERY with --image adds words)
    assert run("search", "red", "-k", "0").exit_code == 2


def test_search_with_another_model_is_refused(run, photos):
    run("index", str(photos), "--model", "fake-colour")
    out = run("search", "red", "--model", "lite")
    assert out.exit_code == 1 and "built with model 'fake-colour'" in out.output


def test_bench_recall_on_a_tiny_dataset(tmp_path):
    root = tmp_path / "ds"
    rows = ["image,caption"]
    for colour in COLOURS:
        draw(root / "images" / f"{colour}.jpg", colour)
        rows += [f"{colour}.jpg,a {colour} square", f"{colour}.jpg,something {colour}"]
    (root / "captions.txt").write_text("\n".join(rows) + "\n")
    (root / "split.txt").write_text("red.jpg\ngreen.jpg\nblue.jpg\n")
    out = CliRunner().invoke(cli, ["bench", "recall", str(root), "--model", "fake-colour", "--json"])
    assert out.exit_code == 0, out.output
    report = json.loads(out.stdout)
    assert report["n_images"] == len(COLOURS) and report["n_texts"] == 2 * len(COLOURS)
    assert report["t2i"]["R@1"] == 100.0 and report["i2t"]["R@1"] == 100.0
    split = json.loads(CliRunner().invoke(cli, ["bench", "recall", str(root), "--split", str(root / "split.txt"),
                                                "--model", "fake-colour", "--json"]).stdout)
    assert (split["n_images"], split["n_texts"]) == (3, 6)


def test_a_file_of_queries_runs_in_one_process_one_json_line_each(run, photos, tmp_path, fake_encoder):
    assert run("index", str(photos), "--model", "fake-colour").exit_code == 0
    queries = tmp_path / "queries.txt"
    queries.write_text("something red\n\n  a blue thing  \n", encoding="utf-8")
    out = run("search", "--queries", str(queries), "-k", "1", "--json")
    assert out.exit_code == 0, out.output
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["query"] for line in lines] == ["something red", "a blue thing"]  # blank lines skipped
    assert [Path(line["hits"][0]["path"]).name for line in lines] == ["red.jpg", "blue.jpg"]
    table = run("search", "--queries", str(queries), "-k", "1")
    assert "== something red" in table.stdout and "red.jpg" in table.stdout


def test_queries_from_standard_input_and_one_kind_of_query_at_a_time(photos, library, fake_encoder):
    runner, args = CliRunner(), ["--library", str(library)]
    assert runner.invoke(cli, ["index", str(photos), "--model", "fake-colour", *args]).exit_code == 0
    out = runner.invoke(cli, ["search", "--queries", "-", "-k", "1", "--json", *args], input="yellow\n")
    assert out.exit_code == 0 and json.loads(out.stdout)["hits"][0]["path"].endswith("yellow.webp")
    both = runner.invoke(cli, ["search", "red", "--queries", "-", *args], input="blue\n")
    assert both.exit_code == 2 and "one of" in both.output
