"""The bench's report and driver on rows written in the tests (tests/test_bench.py runs the whole
quick study once; these hold each table, section and setting to what it should say, in
process and in seconds)."""

from __future__ import annotations

import argparse
import csv
import math

import pytest
import torch

from attention_zoo.structured import structured_qkv
from lra.bench import efficiency, report, roofline, study
from lra.bench.peers import Peer
from lra.bench.profiles import PROFILES
from lra.bench.study import APPROX_COLUMNS


def approx_row(attention, options, relative_error, inputs="structured", scale=1.0,
               source="ours", seq_len=512):
    return {"attention": attention, "options": options, "inputs": inputs, "seq_len": seq_len,
            "scale": scale, "entropy": 4.0, "relative_error": relative_error,
            "fwd_bwd_ms": 1.0, "peak_memory_mb": 2.0, "source": source, "status": "ok"}


def eff_row(attention, seq_len, ms, mb, backend="-", batch=1):
    return {"attention": attention, "backend": backend, "options": "-", "device": "cpu",
            "dtype": "float32", "batch": batch, "heads": 2, "seq_len": seq_len, "head_dim": 32,
            "fwd_ms": ms / 2, "fwd_bwd_ms": ms, "peak_memory_mb": mb, "status": "ok"}


def published_rows() -> list[dict]:
    with open(report.ROOT / "results" / "published" / "published_mra_approximation.csv") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- beside the published figures

def test_our_errors_sit_beside_the_published_ones_under_our_option_names():
    """Each published setting gets our error at the same setting (block= is our block_size=,
    landmarks= our num_landmarks=), from real inputs when there are any, at scale 1 and from
    our own rows only; a setting we did not run says so in the same column (the first published
    row is one we did not run here)."""
    app = [approx_row("mra2", "block_per_row=8", 0.2, inputs="real"),
           approx_row("mra2", "block_per_row=8", 0.9),                       # structured
           approx_row("mra2", "block_per_row=1", 0.7, inputs="real", scale=2.0),
           approx_row("nystrom", "num_landmarks=16", 0.6, inputs="real"),
           approx_row("bigbird", "block_size=8", 0.5, inputs="real"),
           approx_row("longformer", "window=16", 0.1, inputs="real", source="peer:local")]
    table = report.mra_beside_published(app)
    pub = published_rows()
    assert [(r["attention"], r["setting"]) for r in table] == [
        (p["attention"], p["setting"]) for p in pub]
    column = "ours (real, n=512)"
    found = {(r["attention"], r["setting"]): r for r in table}
    assert found["mra2", "block_per_row=8"][column] == 0.2
    assert found["nystrom", "landmarks=16"][column] == 0.6
    assert found["bigbird", "block=8"][column] == 0.5
    # Scale 2 and a peer's row are not ours at the paper's setting.
    assert found["mra2", "block_per_row=1"][column] == "not run"
    assert found["longformer", "window=16"][column] == "not run"
    assert all(list(r) == ["attention", "setting", "published (RoBERTa)", column] for r in table)
    by_setting = {(p["attention"], p["setting"]): float(p["relative_error"]) for p in pub}
    assert all(r["published (RoBERTa)"] == by_setting[r["attention"], r["setting"]]
               for r in table)


def test_without_real_inputs_the_structured_errors_are_put_beside():
    table = report.mra_beside_published([approx_row("mra2", "block_per_row=8", 0.9,
                                                    seq_len=256)])
    row = next(r for r in table if (r["attention"], r["setting"]) == ("mra2", "block_per_row=8"))
    assert row["ours (structured, n=256)"] == 0.9
    assert report.mra_beside_published([])[0]["ours"] == "not run"


def test_peers_table_pairs_each_peer_row_with_ours_at_the_same_setting():
    app = [approx_row("performer", "num_features=32", 0.3, source="ours"),
           approx_row("performer", "num_features=32", 0.9, source="ours", scale=2.0),
           approx_row("performer", "num_features=32", 0.4, source="peer:performer-pytorch"),
           approx_row("reformer", "num_hashes=1", 0.5, inputs="real",
                      source="peer:reformer-pytorch")]
    assert report.peers_table(app) == [
        {"attention": "performer", "options": "num_features=32", "inputs": "structured",
         "peer": "performer-pytorch", "ours": 0.3, "peer_error": 0.4, "peer_status": "ok"},
        {"attention": "reformer", "options": "num_hashes=1", "inputs": "real",
         "peer": "reformer-pytorch", "ours": "", "peer_error": 0.5, "peer_status": "ok"}]


# ---------------------------------------------------------------------------------- README.md

def cfg_of(cell_limit_s=60.0) -> dict:
    return {"heads": 2, "head_dim": 32, "batches": [1, 8], "lengths": [512, 1024], "repeats": 5,
            "segments": 2, "cell_limit_s": cell_limit_s}


ARGS = argparse.Namespace(device="cpu", profile="default")
EFF = [eff_row("softmax", 512, 10.0, 4.0), eff_row("softmax", 1024, 40.0, 8.0),
       eff_row("mra2", 512, 5.0, 2.0, backend="cpp"), eff_row("mra2", 1024, 8.0, 4.0,
                                                              backend="cpp")]
APP = [approx_row("mra2", "block_per_row=8", 0.2),
       approx_row("uniform", "-", 0.95, source="reference")]
ROOF = [{"kernel": "block_sparse", "backend": "cpp", "seq_len": 1024, "pass": "forward",
         "ms": 1.5, "gflops": 12.0, "fraction_of_dense": 0.25}]


def sections(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("#")]


def test_readme_has_every_section_of_what_was_run(monkeypatch):
    monkeypatch.setattr(report, "git_commit", lambda: "abc1234")
    text = report.readme("python -m lra.bench --profile default", ARGS, cfg_of(), EFF, APP, ROOF)
    assert sections(text) == [
        "# Efficiency and approximation of every attention", "## Efficiency", "## Approximation",
        "### Beside the MRA paper's figures", "### Uniform attention, the floor",
        "## Roofline of the block-sparse kernel"]
    assert text.startswith("# Efficiency and approximation of every attention\n\nMade by "
                           "`python -m lra.bench --profile default` at commit abc1234, on cpu "
                           "(profile `default`).\n")
    assert ("One attention layer, 2 heads x 32, fp32, batch 1, 8, lengths 512, 1024; q, k, v "
            "from attention_zoo.structured. Time: median of 5 calls after a warm-up, fewer once "
            "a timer's calls pass 15 s (a quarter of the cell limit) (CUDA events") in text
    assert "MiniLM-L6's 6 layers x 12 heads x 32 on 2 segments" in text
    # The efficiency table is the ratios table: mra2 at n = 1024 over softmax.
    line = next(l for l in text.splitlines() if l.startswith("| mra2 | cpp |"))
    assert "| 1024 |" in line and "| 0.2 |" in line and "| 0.5 |" in line  # 8/40, 4/8
    assert "| mra2 | block_per_row=8 | 0.15 | 0.2 |" in text       # beside the paper's 0.15
    assert "| structured | 512 | 4 | 0.95 |" in text                # the floor
    assert "| block_sparse | cpp | 1024 | forward | 1.5 | 12 | 0.25 |" in text
    assert text.endswith("\nFull tables: efficiency.csv, approximation.csv, roofline.csv.\n")
    assert "### Ours beside the peer packages" not in text


def test_readme_says_only_what_was_run(monkeypatch):
    """No cell limit, no timer phrase; the approximation section stays when the published file
    is missing; a part not run has no section; peers get theirs when there are peer rows."""
    monkeypatch.setattr(report, "git_commit", lambda: "abc1234")
    eff_only = report.readme("cmd", ARGS, cfg_of(None), EFF, [], [])
    assert sections(eff_only) == ["# Efficiency and approximation of every attention",
                                  "## Efficiency"]
    assert "median of 5 calls after a warm-up (CUDA events" in eff_only
    monkeypatch.setattr(report, "published", lambda which: [])
    peer = approx_row("mra2", "block_per_row=8", 0.3, source="peer:somebody")
    app_only = report.readme("cmd", ARGS, cfg_of(), [], [*APP, peer], [])
    assert sections(app_only) == [
        "# Efficiency and approximation of every attention", "## Approximation",
        "### Ours beside the peer packages, same inputs and settings",
        "### Uniform attention, the floor"]
    assert "| mra2 | block_per_row=8 | structured | somebody | 0.2 | 0.3 | ok |" in app_only


def test_git_commit_names_this_checkout():
    commit = report.git_commit()
    assert commit == "unknown" or (len(commit) >= 7 and int(commit, 16) >= 0)


# ------------------------------------------------------------------------------- the driver

def parse(*argv: str):
    return study.parser().parse_args(list(argv))


def test_settings_are_the_profile_with_the_command_line_over_it():
    prof = PROFILES["default"]
    cfg = study.settings(parse())
    assert cfg == {"heads": prof.heads, "head_dim": prof.head_dim, "lengths": list(prof.lengths),
                   "batches": list(prof.batches), "repeats": prof.repeats,
                   "isolate": prof.isolate, "approx_len": prof.approx_len,
                   "inputs": list(prof.inputs), "segments": prof.segments,
                   "budget_points": prof.budget_points, "scales": prof.scales,
                   "threads": prof.threads, "cell_limit_s": prof.cell_limit_s}
    assert study.settings(parse("--device", "cuda"))["lengths"] == list(prof.gpu_lengths)
    over = study.settings(parse("--profile", "paper", "--lengths", "64", "--batches", "3",
                                "--repeats", "2", "--approx-len", "96", "--inputs", "real",
                                "--budget-points", "1", "--threads", "4", "--cell-limit", "9"))
    assert {key: over[key] for key in ("lengths", "batches", "repeats", "approx_len", "inputs",
                                       "budget_points", "threads", "cell_limit_s")} == {
        "lengths": [64], "batches": [3], "repeats": 2, "approx_len": 96, "inputs": ["real"],
        "budget_points": 1, "threads": 4, "cell_limit_s": 9.0}
    assert over["heads"] == PROFILES["paper"].heads


def test_the_efficiency_grid_goes_to_one_worker_per_series_with_the_settings(monkeypatch):
    calls = []

    def fake_worker(name, backend, args, planned):
        calls.append((name, backend, args, planned))
        return [efficiency.unmeasured(p, "ok") | {"fwd_bwd_ms": 1.0, "peak_memory_mb": 2.0}
                for p in planned]

    monkeypatch.setattr(efficiency, "series_in_worker", fake_worker)
    monkeypatch.setattr(efficiency, "backends", lambda name, device, which: ["-", "cpp"])
    args = parse("--lengths", "64", "128", "--batches", "1", "2", "--repeats", "3",
                 "--threads", "2", "--cell-limit", "0")
    cfg = study.settings(args)
    lines = []
    rows = study.efficiency_rows(["softmax"], cfg, args, lines.append)
    assert [c[:2] for c in calls] == [("softmax", "-"), ("softmax", "cpp")]
    assert calls[0][2] == ["--profile", "default", "--device", "cpu", "--repeats", "3",
                           "--lengths", "64", "128", "--batches", "1", "2", "--threads", "2",
                           "--cell-limit", "0"]
    # The planned cells name each cell as the worker's rows will (dropout off included).
    assert calls[0][3] == [efficiency.which_cell("softmax", "-", "cpu", b, 2, n, 32)
                           for b in (1, 2) for n in (64, 128)]
    assert calls[0][3][0]["options"] == "dropout=0.0"
    assert len(rows) == 8 and len(lines) == 8
    assert lines[0] == f"{'softmax':18s} {'-':10s} b=1   n=64     {1.0:10.2f} ms {2.0:9.2f} MB"


def test_without_isolation_the_series_runs_here_and_failures_are_logged(monkeypatch):
    seen = []

    def fake_series(*grid):
        seen.append(grid)
        yield efficiency.unmeasured(efficiency.which_cell("softmax", "-", "cpu", 1, 2, 64, 32),
                                    "oom")

    monkeypatch.setattr(efficiency, "series", fake_series)
    args = parse("--profile", "quick")
    cfg = study.settings(args)
    lines = []
    rows = study.efficiency_rows(["softmax"], cfg, args, lines.append)
    assert seen == [("softmax", "-", [64, 128], [1], 2, 32, "cpu", 3, None)]
    assert [r["status"] for r in rows] == ["oom"] and lines[0].endswith(" oom")


def test_unknown_attentions_are_refused_with_the_valid_names(capsys, tmp_path):
    with pytest.raises(SystemExit):
        study.main(["--attentions", "softmax", "nope", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert "unknown attention(s) ['nope']; valid: " in err and "mra2_s" in err


def test_a_worker_prints_one_json_row_per_cell(monkeypatch, capsys):
    monkeypatch.setattr(efficiency, "series", lambda *grid: iter([{"grid": list(grid)}]))
    assert study.main(["--profile", "quick", "--cell-limit", "5", "--worker", "efficiency",
                       "mra2", "cpp"]) == 0
    assert capsys.readouterr().out == (
        '{"grid": ["mra2", "cpp", [64, 128], [1], 2, 32, "cpu", 3, 5.0]}\n')


def test_main_runs_at_the_profiles_threads_and_restores_the_callers(monkeypatch):
    inside = []
    monkeypatch.setattr(efficiency, "series",
                        lambda *grid: inside.append(torch.get_num_threads()) or iter([]))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        study.main(["--profile", "quick", "--worker", "efficiency", "softmax", "-"])
        restored = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert inside == [PROFILES["quick"].threads] and restored == 2


def test_the_roofline_runs_only_for_a_block_sparse_attention(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(roofline, "roofline", lambda *a: calls.append(a) or ROOF)
    base = ["--profile", "quick", "--parts", "roofline", "--lengths", "64", "256"]
    assert study.main([*base, "--attentions", "softmax", "--out", str(tmp_path / "a")]) == 0
    assert calls == [] and not (tmp_path / "a" / "roofline.csv").exists()
    assert study.main([*base, "--attentions", "mra2", "--out", str(tmp_path / "b")]) == 0
    assert calls == [(256, "cpu", 2, 32, 3)]
    with open(tmp_path / "b" / "roofline.csv") as f:
        assert [r["gflops"] for r in csv.DictReader(f)] == ["12.0"]
    readme = (tmp_path / "b" / "README.md").read_text()
    assert "## Roofline" in readme and "python -m lra.bench --profile quick" in readme


# ------------------------------------------------------------------------- the approximation

class Noisy:
    """A peer standing in for a package: exact attention times (1 + a draw made at build)."""

    def __init__(self):
        self.draws = []

    def build(self, value, heads, head_dim):
        noise = float(torch.randn(()))
        self.draws.append(noise)

        def attend(q, k, v, mask):
            p = torch.softmax(q @ k.transpose(-1, -2) * head_dim ** -0.5, dim=-1)
            return (p @ v) * (1 + noise)
        return attend


def exact_rows(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5, dim=-1) @ v


def test_approximation_sweeps_each_knob_and_scale_once_with_peers_seeded(monkeypatch):
    """performer: its first two budgets at scale 1 and its default (256 features, not a budget
    point here) over the scales; softmax (no knob): its default over the scales. A peer's equal
    setting reached again as a budget point counts once; the peer's draws are seeded; the floor
    is the mean of v on the structured inputs of the profile's shape."""
    noisy = Noisy()
    peer = Peer("performer", "noisy-pkg", "noisy", lambda m: {"num_features": m}, noisy.build)
    monkeypatch.setattr(study, "installed_peers", lambda: [peer])
    args = parse("--profile", "quick", "--approx-len", "32", "--repeats", "1", "--peers")
    cfg = study.settings(args)
    rows = study.approximation_rows(["softmax", "performer"], cfg, args, lambda line: None)
    assert all(set(r) == set(APPROX_COLUMNS) for r in rows)
    keys = [(r["attention"], r["options"], r["scale"], r["source"]) for r in rows]
    assert sorted(keys) == sorted(
        [("softmax", "-", s, "ours") for s in (0.5, 1.0, 2.0)]
        + [("performer", f"num_features={m}", 1.0, "ours") for m in (32, 64)]
        + [("performer", "num_features=256", s, "ours") for s in (0.5, 1.0, 2.0)]
        + [("performer", f"num_features={m}", 1.0, "peer:noisy-pkg") for m in (32, 64)]
        + [("uniform", "-", 1.0, "reference")])
    assert all(r["status"] == "ok" and r["seq_len"] == 32 for r in rows)
    torch.manual_seed(0)
    seeded = abs(float(torch.randn(())))
    assert noisy.draws and all(d == noisy.draws[0] for d in noisy.draws)
    for r in rows:
        if r["source"] == "peer:noisy-pkg":
            assert math.isclose(r["relative_error"], seeded, rel_tol=1e-4), r
        if r["attention"] == "softmax":
            assert r["relative_error"] < 1e-5
    q, k, v = structured_qkv(4, 2, 32, 32, seed=1)
    exact = exact_rows(q, k, v)
    uniform = v.mean(dim=2, keepdim=True).expand_as(v)
    floor = ((uniform - exact).flatten(2).norm(dim=-1) / exact.flatten(2).norm(dim=-1)).mean()
    row = next(r for r in rows if r["attention"] == "uniform")
    assert math.isclose(row["relative_error"], float(floor), rel_tol=1e-5)
