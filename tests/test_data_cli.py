"""The command line: every failure is one `error:` line naming the file and the fix; tasks build
through it end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import data_prep.__main__ as cli
from data_prep.__main__ import main
from data_prep.cache import DataError, read_manifest


def run(argv, capsys) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv,needle", [
    (["text", "--source", "raw", "--raw", "{tmp}/none.tar.gz"],
     "no IMDb archive or folder at {tmp}/none.tar.gz; fetch it with: python -m data_prep "
     "download imdb"),
    (["image", "--source", "raw", "--raw", "{tmp}/none"],
     "no CIFAR-10 archive or folder at {tmp}/none"),
    (["retrieval", "--source", "lra_release", "--release", "{tmp}"],
     "tsv_data/ is not in the release folder {tmp}"),
    (["pathx", "--source", "lra_release", "--release", "{tmp}/lra_release.gz"],
     "{tmp}/lra_release.gz does not exist; download the release with: python -m data_prep "
     "download lra_release"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, needle):
    code, out, err = run([a.format(tmp=tmp_path) for a in argv], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert needle.format(tmp=tmp_path) in err


def test_a_multi_line_message_is_printed_on_one_line(capsys, monkeypatch):
    def fail(args):
        raise DataError("x.tar.gz is corrupt (zlib: invalid block\nat offset 7)\n")

    monkeypatch.setattr(cli, "run", fail)
    code, _, err = run(["mini"], capsys)
    assert (code, err) == (2, "error: x.tar.gz is corrupt (zlib: invalid block at offset 7)\n")


def test_file_system_errors_are_one_line(tmp_path, capsys):
    folder = tmp_path / "listops-1000"
    folder.mkdir()
    for split in ("train", "val", "test"):
        (folder / f"basic_{split}.tsv").write_text("Source\tTarget\n( [MAX 2 ] )\t2\n")
    (tmp_path / "file").write_text("not a folder")
    code, out, err = run(["listops", "--source", "lra_release", "--release", tmp_path, "--out",
                          tmp_path / "file" / "cache"], capsys)
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"error: {tmp_path / 'file'}: a file is in the way where a folder "
                          "should be")


def test_a_bug_is_exit_1_and_says_how_to_see_the_traceback(capsys, monkeypatch):
    def fail(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli, "run", fail)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    code, _, err = run(["mini"], capsys)
    assert code == 1 and err.startswith("internal error: ZeroDivisionError: division by zero")
    assert "HYDRA_FULL_ERROR=1" in err and err.count("\n") == 1
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(ZeroDivisionError):
        run(["mini"], capsys)


@pytest.mark.parametrize("option", ["--num-images 5", "--workers 0", "--seed -1"])
def test_counts_are_checked_by_the_parser(capsys, option):
    with pytest.raises(SystemExit) as exc:
        main(["pathfinder", "--source", "generate", *option.split()])
    assert exc.value.code == 2
    assert f"argument {option.split()[0]}: '{option.split()[1]}' is not an integer >= " in (
        capsys.readouterr().err)


def test_text_source_must_be_one_it_has(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["text", "--source", "lra_release"])
    assert exc.value.code == 2
    assert "invalid choice: 'lra_release'" in capsys.readouterr().err


def test_pathfinder_generate(tmp_path, capsys):
    code, out, _ = run(["pathfinder", "--source", "generate", "--resolution", 64, "--difficulty",
                        "curv_baseline", "--num-images", 20, "--workers", 1, "--quiet", "--out",
                        tmp_path / "pf"], capsys)
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'pf'} (pathfinder, max_len 4096)")
    manifest = read_manifest(tmp_path / "pf", task="pathfinder")
    assert manifest["params"]["resolution"] == 64
    assert manifest["params"]["settings"]["contour_length"] == 6


def test_mini_subset(tmp_path, capsys):
    code, out, _ = run(["mini", "--tasks", "image", "--out", tmp_path, "--quiet"], capsys)
    assert code == 0 and f"wrote {tmp_path / 'image'}" in out
    assert json.loads((tmp_path / "image" / "manifest.json").read_text())["mini"] is True


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "data_prep", "--help"], capture_output=True,
                          text=True, check=True)
    for task in ("listops", "text", "retrieval", "image", "pathfinder", "pathx", "mini",
                 "download"):
        assert task in done.stdout
