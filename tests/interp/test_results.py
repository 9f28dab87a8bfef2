"""Run folders: round trip, every load_run rejection, atomic writes, describe_tensor, bootstrap."""

import json
from pathlib import Path

import pytest
import torch

from interp import results, stats
from interp.errors import InterpError, RunFolderError
from interp.results import (
    SCHEMA_VERSION,
    RunResult,
    describe_tensor,
    load_run,
    package_versions,
    read_tensors,
    write_json_atomic,
    write_tensors_atomic,
    write_text_atomic,
)
from interp.stats import bootstrap_ci, bootstrap_ci_map


def make_run() -> RunResult:
    g = torch.Generator().manual_seed(0)
    resid = torch.randn(3, 4, generator=g)
    heads = torch.randn(3, 2, generator=g)
    per_prompt = torch.randn(5, 3, 4, generator=g)
    by_layer = torch.randn(3, generator=g).to(torch.bfloat16)
    scores = {
        "activation/resid_pre": resid,
        "activation/head_out": heads,
        "activation/resid_pre/per_prompt": per_prompt,
        "activation/by_layer": by_layer,
    }
    tensors = {
        "activation/resid_pre": describe_tensor(
            "activation/resid_pre", resid, ["layer", "pos"], {"pos": ["0 When", "1 ␣Mary", "2 ␣and", "3 ␣John"]}
        ),
        "activation/head_out": describe_tensor("activation/head_out", heads, ["layer", "head"]),
        "activation/resid_pre/per_prompt": describe_tensor(
            "activation/resid_pre/per_prompt", per_prompt, ["prompt", "layer", "pos"]
        ),
        "activation/by_layer": describe_tensor("activation/by_layer", by_layer, ["layer"]),
    }
    manifest = {
        "command": "patch",
        "model": "tiny-test",
        "backend": "transformer_lens",
        "dtype": "float32",
        "prompt_set": {"name": "ioi", "n": 5, "fingerprint": "abc123"},
        "metric": "logit_diff",
        "methods": ["activation"],
        "components": ["resid_pre", "head_out"],
        "parameters": {"positions": "all", "undefined": None},
        "baselines": {"clean": 3.5, "corrupt": -1.25},
        "timings": {"total_s": 0.5},
        "versions": package_versions(),
        "seed": 0,
        "status": "complete",
        "tensors": tensors,
    }
    return RunResult(manifest=manifest, scores=scores)


def assert_same_json(a, b):
    """Equal as JSON text."""
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


# --- round trip ----------------------------------------------------------------------------------


def test_round_trip_identical(tmp_path):
    run = make_run()
    folder = run.save(tmp_path / "run")
    assert folder == tmp_path / "run" and run.path == folder
    assert {p.name for p in folder.iterdir()} == {"manifest.json", "scores.safetensors", "report.html"}
    assert run.manifest["schema_version"] == SCHEMA_VERSION

    loaded = load_run(folder)
    assert loaded.path == folder
    assert_same_json(loaded.manifest, run.manifest)
    assert set(loaded.scores) == set(run.scores)
    for name, tensor in run.scores.items():
        assert loaded.scores[name].dtype == tensor.dtype
        assert torch.equal(loaded.scores[name], tensor)
    assert loaded.tensor_info("activation/head_out") == {"axes": ["layer", "head"], "sizes": [3, 2], "labels": {}}
    assert "activation/resid_pre" in repr(loaded)


def test_save_keeps_existing_schema_version_and_overwrites(tmp_path):
    run = make_run()
    run.save(tmp_path)
    run.scores["activation/head_out"] = run.scores["activation/head_out"] * 2
    run.save(tmp_path)
    assert torch.equal(load_run(tmp_path).scores["activation/head_out"], run.scores["activation/head_out"])


def test_save_refuses_undescribed_tensor(tmp_path):
    run = make_run()
    run.scores["extra"] = torch.zeros(2)
    with pytest.raises(ValueError, match="'extra'"):
        run.save(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_report_has_one_figure_per_2d_tensor(tmp_path):
    folder = make_run().save(tmp_path)
    report = (folder / "report.html").read_text(encoding="utf-8")
    assert report.count("Plotly.newPlot") == 2  # resid_pre and head_out; not per_prompt, not 1-D
    assert "logit_diff" in report and "tiny-test" in report
    run = make_run()
    run.manifest["tensors"]["activation/by_layer"]["plot"] = True  # a 1-D tensor asks for bars
    run.manifest["tensors"]["activation/head_out"]["plot"] = False
    run.manifest["lines"] = [{"title": "by layer, as a line", "x": "activation/by_layer", "ys": ["activation/by_layer"]}]
    report = (run.save(tmp_path / "bars") / "report.html").read_text(encoding="utf-8")
    assert report.count("Plotly.newPlot") == 3 and "by layer, as a line" in report


def test_plot_uses_manifest_axes_and_labels():
    run = make_run()
    fig = run.plot("activation/resid_pre")
    assert list(fig.data[0].x) == ["0 When", "1 ␣Mary", "2 ␣and", "3 ␣John"]
    assert list(fig.data[0].y) == ["0", "1", "2"]
    assert fig.layout.xaxis.title.text == "pos" and fig.layout.yaxis.title.text == "layer"
    fig3 = run.plot("activation/resid_pre/per_prompt")
    assert torch.allclose(
        torch.tensor(fig3.data[0].z, dtype=torch.float32), run.scores["activation/resid_pre/per_prompt"].mean(-1)
    )
    assert fig3.data[0].type == "heatmap"
    assert run.plot("activation/by_layer").data[0].type == "bar"
    with pytest.raises(KeyError):
        run.plot("nope")


def test_package_versions_keys():
    versions = package_versions()
    assert set(versions) == {"interp", "torch", "transformers", "transformer-lens", "nnsight", "safetensors", "python"}
    assert all(isinstance(v, str) and v for v in versions.values())


# --- load_run rejections -------------------------------------------------------------------------


def saved(tmp_path) -> Path:
    return make_run().save(tmp_path / "run")


def edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    change(manifest)
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def load_error(folder) -> str:
    with pytest.raises(RunFolderError) as info:
        load_run(folder)
    message = str(info.value)
    assert "\n" not in message and ":" in message
    return message


def test_missing_folder(tmp_path):
    assert "does not exist" in load_error(tmp_path / "nowhere")


def test_file_instead_of_folder(tmp_path):
    (tmp_path / "f").write_text("x")
    assert "not a run folder" in load_error(tmp_path / "f")


def test_missing_manifest(tmp_path):
    folder = saved(tmp_path)
    (folder / "manifest.json").unlink()
    assert "no manifest.json" in load_error(folder)


def test_bad_json(tmp_path):
    folder = saved(tmp_path)
    (folder / "manifest.json").write_text('{"schema_version": 1, "tens', encoding="utf-8")
    assert "not valid JSON" in load_error(folder)


def test_manifest_not_an_object(tmp_path):
    folder = saved(tmp_path)
    (folder / "manifest.json").write_text("[1, 2]", encoding="utf-8")
    assert "not an object" in load_error(folder)


@pytest.mark.parametrize("version", [None, "1", 1.0, True, 0])
def test_missing_or_bad_schema_version(tmp_path, version):
    folder = saved(tmp_path)
    if version is None:
        edit_manifest(folder, lambda m: m.pop("schema_version"))
    else:
        edit_manifest(folder, lambda m: m.update(schema_version=version))
    assert "schema_version" in load_error(folder)


def test_newer_schema(tmp_path):
    folder = saved(tmp_path)
    edit_manifest(folder, lambda m: m.update(schema_version=3))
    message = load_error(folder)
    assert "newer interp" in message and "schema 3" in message and f"knows {SCHEMA_VERSION}" in message
    assert message.endswith("upgrade interp")


def test_missing_tensors_entry(tmp_path):
    folder = saved(tmp_path)
    edit_manifest(folder, lambda m: m.pop("tensors"))
    assert "'tensors'" in load_error(folder)


def test_missing_scores_file(tmp_path):
    folder = saved(tmp_path)
    (folder / "scores.safetensors").unlink()
    assert "no scores.safetensors" in load_error(folder)


def test_unreadable_scores_file(tmp_path):
    folder = saved(tmp_path)
    (folder / "scores.safetensors").write_bytes(b"\x00\x01 not safetensors")
    assert "cannot be read" in load_error(folder)


def test_tensor_missing_from_file(tmp_path):
    folder = saved(tmp_path)
    tensors = read_tensors(folder / "scores.safetensors")
    del tensors["activation/head_out"]
    write_tensors_atomic(folder / "scores.safetensors", tensors)
    message = load_error(folder)
    assert "'activation/head_out'" in message and "no such tensor" in message


def test_shape_mismatch(tmp_path):
    folder = saved(tmp_path)
    edit_manifest(folder, lambda m: m["tensors"]["activation/head_out"].update(sizes=[2, 3]))
    message = load_error(folder)
    assert "'activation/head_out'" in message and "[3, 2]" in message and "[2, 3]" in message


def test_undescribed_tensor(tmp_path):
    folder = saved(tmp_path)
    tensors = read_tensors(folder / "scores.safetensors")
    tensors["stray"] = torch.ones(2)
    write_tensors_atomic(folder / "scores.safetensors", tensors)
    message = load_error(folder)
    assert "'stray'" in message and "does not describe" in message


# --- atomic writes -------------------------------------------------------------------------------


def test_atomic_writes_leave_no_temp_files_and_replace_whole(tmp_path):
    path = tmp_path / "a.txt"
    write_text_atomic(path, "x" * 10_000)
    write_text_atomic(path, "short")
    assert path.read_text(encoding="utf-8") == "short"

    write_json_atomic(tmp_path / "m.json", {"a": [1, 2], "path": tmp_path, "t": torch.tensor(2.5)})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"a": [1, 2], "path": str(tmp_path), "t": 2.5}

    big = {"x": torch.zeros(100, 100)}
    write_tensors_atomic(tmp_path / "s.safetensors", big)
    write_tensors_atomic(tmp_path / "s.safetensors", {"y": torch.ones(2)})
    assert set(read_tensors(tmp_path / "s.safetensors")) == {"y"}

    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "m.json", "s.safetensors"]


def test_atomic_write_failure_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "m.json"
    write_json_atomic(path, {"old": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"bad": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(results.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(path, {"new": 2})
    assert json.loads(path.read_text(encoding="utf-8")) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_write_tensors_makes_views_contiguous_and_unshared(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    write_tensors_atomic(tmp_path / "s.safetensors", {"t": base.T, "row": base[0], "all": base})
    back = read_tensors(tmp_path / "s.safetensors")
    assert torch.equal(back["t"], base.T) and torch.equal(back["row"], base[0])


# --- describe_tensor -----------------------------------------------------------------------------


def test_describe_tensor_entry():
    t = torch.zeros(2, 3)
    entry = describe_tensor("x", t, ["layer", "pos"], {"pos": ["a", "b", "c"]})
    assert entry == {"axes": ["layer", "pos"], "sizes": [2, 3], "labels": {"pos": ["a", "b", "c"]}}


@pytest.mark.parametrize(
    "axes, labels, fragment",
    [
        (["layer"], None, "1 axis names"),
        (["layer", "pos", "head"], None, "3 axis names"),
        (["layer", "layer"], None, "repeats"),
        (["layer", "pos"], {"pos": ["a", "b"]}, "3 but 2 labels"),
        (["layer", "pos"], {"head": ["a", "b"]}, "'head'"),
    ],
)
def test_describe_tensor_rejects(axes, labels, fragment):
    with pytest.raises(ValueError, match=fragment):
        describe_tensor("x", torch.zeros(2, 3), axes, labels)


# --- bootstrap -----------------------------------------------------------------------------------


def test_bootstrap_deterministic_and_contains_mean():
    values = torch.randn(50, generator=torch.Generator().manual_seed(1))
    first = bootstrap_ci(values, seed=7)
    assert first == bootstrap_ci(values, seed=7)
    assert first != bootstrap_ci(values, seed=8)
    mean, lo, hi = first
    assert mean == pytest.approx(float(values.double().mean()))
    assert lo < mean < hi


def test_bootstrap_width_shrinks_with_n():
    g = torch.Generator().manual_seed(2)
    small = torch.randn(10, generator=g)
    large = torch.randn(1000, generator=g)
    _, lo_s, hi_s = bootstrap_ci(small)
    _, lo_l, hi_l = bootstrap_ci(large)
    assert hi_l - lo_l < (hi_s - lo_s) / 3


def test_bootstrap_single_value_is_degenerate():
    assert bootstrap_ci(torch.tensor([2.5])) == (2.5, 2.5, 2.5)
    lo, hi = bootstrap_ci_map(torch.tensor([[1.0, -2.0]]))
    assert torch.equal(lo, torch.tensor([1.0, -2.0])) and torch.equal(hi, lo)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError):
        bootstrap_ci(torch.zeros(0))
    with pytest.raises(ValueError):
        bootstrap_ci(torch.zeros(3, 2))
    with pytest.raises(ValueError):
        bootstrap_ci(torch.zeros(3), level=1.5)


@pytest.mark.parametrize("max_chunk", [1 << 22, 1000])  # 1000: two elements per chunk, many chunks
def test_bootstrap_map_matches_elementwise(monkeypatch, max_chunk):
    monkeypatch.setattr(stats, "_MAX_CHUNK_ELEMENTS", max_chunk)
    per_prompt = torch.randn(20, 3, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    lo, hi = bootstrap_ci_map(per_prompt, n_boot=500, seed=5)
    assert lo.shape == hi.shape == (3, 4) and lo.dtype == torch.float64
    for i in range(3):
        for j in range(4):
            _, lo_ij, hi_ij = bootstrap_ci(per_prompt[:, i, j], n_boot=500, seed=5)
            assert lo[i, j].item() == pytest.approx(lo_ij, abs=1e-12)
            assert hi[i, j].item() == pytest.approx(hi_ij, abs=1e-12)
    assert bool((lo <= per_prompt.mean(0)).all() and (per_prompt.mean(0) <= hi).all())


def test_a_nan_in_the_manifest_is_refused_before_any_file_is_written(tmp_path):
    run = make_run()
    run.manifest["parameters"]["lr"] = float("nan")
    with pytest.raises(InterpError, match=r"non-finite number .* at parameters\.lr"):
        run.save(tmp_path / "run")
    assert not (tmp_path / "run").exists()
