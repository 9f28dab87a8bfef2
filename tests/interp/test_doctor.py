"""``interp doctor`` (interp.doctor, patching.doctor) and ``interp.load(..., verify=True)``.

The doctor passes on tiny random models of several block shapes, reports a backend that refuses the
model as a row and not a failure, and fails, naming the check and the site, on models whose
architecture adapter is deliberately wrong (Granite without its residual multiplier on attn_out,
OLMo-2 read through a Llama adapter). A hook left behind and an exception inside a check are reported.
The command itself runs as a subprocess (exit 0, table, JSON, one-line errors) and in-process with a
wrong adapter (exit 1).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
import transformers as T
from family_models import build, tokenizer
from typer.testing import CliRunner

import interp
from interp import InterpError
from interp.adapters import adapter_for
from interp.doctor import Check, Probe, run_checks
from interp.patching.doctor import doctor_checks


def fresh(row_id: str) -> interp.Model:
    """A new `Model` around the cached tiny model's HF weights (its own adapter and backends; nothing shared changes)."""
    return interp.Model(row_id, build(row_id).hf, tokenizer(), backend="torch")


def with_attn_scale(adapter, scale: float):
    points = dict(adapter.points)
    points["attn_out"] = dataclasses.replace(points["attn_out"], scale=scale)
    return dataclasses.replace(adapter, points=points)


def by_name(checks: list[Check]) -> dict[tuple[str, str], Check]:
    return {(c.name, c.backend): c for c in checks}


@pytest.mark.parametrize("row_id", ["llama", "neox-parallel", "gemma2-caps"])
def test_doctor_passes_on_tiny_family_models(row_id):
    model = fresh(row_id)
    checks = doctor_checks(model)
    assert all(c.passed and not c.refused for c in checks), [c for c in checks if not c.passed]
    names = {c.name for c in checks}
    for backend in ("torch", "nnsight", "lens"):
        assert ("logits = HF forward", backend) in by_name(checks)
    if model.adapter.block == "parallel":
        assert "resid_post = resid_pre + attn_out + mlp_out" in names and "resid_mid = resid_pre + attn_out" not in names
    else:
        assert {"resid_mid = resid_pre + attn_out", "resid_post = resid_mid + mlp_out"} <= names
    assert ("head_out · W_O + b_O = attn_out" in names) == model.adapter.sublayers_add_linearly()  # not for sandwich
    assert {"interventions = torch", "batched = hooks engine (resid_pre)", "batched = hooks engine (head_out)",
            "no hook left behind"} <= names
    for c in checks:
        if c.max_diff is not None:
            assert 0 <= c.max_diff <= c.tolerance, c
    engine = by_name(checks)[("batched = hooks engine (head_out)", "torch")]
    assert engine.detail.startswith("6 patches (layers 1, 2 x heads 0, 2, 3); largest effect ")


def test_moe_model_checks_the_expert_sum():
    checks = run_checks(fresh("qwen3moe"), backends=["torch", "nnsight"])
    assert by_name(checks)[("Σ expert_out = mlp_out", "torch")].passed
    assert all(c.passed for c in checks)


def test_a_wrong_residual_multiplier_fails_and_names_the_site():
    model = fresh("granite")
    model.adapter = with_attn_scale(model.adapter, 1.0)  # Granite multiplies attention's output by 0.5
    checks = by_name(doctor_checks(model))
    failed = {key for key, c in checks.items() if not c.passed}
    assert {("resid_mid = resid_pre + attn_out", "torch"), ("head_out · W_O + b_O = attn_out", "torch"),
            ("reads = torch (43 sites)", "lens")} <= failed
    assert "attn_out.0" in checks[("resid_mid = resid_pre + attn_out", "torch")].detail
    assert checks[("reads = torch (43 sites)", "lens")].detail == "largest: attn_out.0"  # the bridge's hook is right
    bad = checks[("resid_mid = resid_pre + attn_out", "torch")]
    assert bad.max_diff > 10 * bad.tolerance
    # plain logits do not depend on the adapter; nothing else was touched
    assert all(checks[("logits = HF forward", b)].passed for b in ("torch", "nnsight", "lens"))
    assert checks[("resid_post = resid_mid + mlp_out", "torch")].passed and checks[("no hook left behind", "all")].passed


def test_a_llama_adapter_on_olmo2_fails_with_the_missing_module():
    model = fresh("olmo2")
    cfg = model.hf.config
    model.adapter = adapter_for(T.LlamaConfig(hidden_size=cfg.hidden_size, num_attention_heads=cfg.num_attention_heads,
                                              num_key_value_heads=cfg.num_key_value_heads, vocab_size=cfg.vocab_size,
                                              intermediate_size=cfg.intermediate_size, num_hidden_layers=cfg.num_hidden_layers))
    checks = run_checks(model)
    failed = [c for c in checks if not c.passed]
    assert {c.name for c in failed} == {"residual identities", "reads and interventions = torch"}
    assert all("no module 'model.layers.0.input_layernorm'" in c.detail for c in failed)
    assert by_name(checks)[("no hook left behind", "all")].passed  # hooks placed before the error are removed


def test_a_backend_that_refuses_the_model_is_a_row_not_a_failure():
    checks = run_checks(fresh("falcon-newarch-kv2"))
    lens = [c for c in checks if c.backend == "lens"]
    assert len(lens) == 1 and lens[0].refused and lens[0].passed and lens[0].status == "refused"
    assert lens[0].detail.startswith("refused: TransformerLens's bridge cannot wrap this falcon model")
    assert all(c.passed for c in checks)
    assert any(c.name.startswith("reads = torch") and c.backend == "nnsight" for c in checks)


def test_quick_checks_run_on_the_models_backend_only():
    model = fresh("llama")
    model.backend_name = "nnsight"
    checks = run_checks(model, quick=True)
    assert [c.name for c in checks if c.name.startswith("logits")] == ["logits = HF forward"]
    assert {c.backend for c in checks} == {"nnsight", "all"}
    assert not any(c.name.startswith(("reads", "interventions", "batched")) for c in checks)
    assert all(c.passed for c in checks)


def test_a_hook_left_behind_and_an_exception_are_reported():
    model = fresh("llama")
    handles = []

    def leaky(m, probe):
        layer = m.adapter.layer_list(m.hf)[1]
        handles.append(layer.mlp.register_forward_hook(lambda *args: None))
        return []

    def broken(m, probe):
        raise RuntimeError("something inside\nsecond line")

    try:
        checks = by_name(run_checks(model, backends=["torch"], extra=[leaky, broken]))
    finally:
        for h in handles:
            h.remove()
    hook = checks[("no hook left behind", "all")]
    assert not hook.passed and hook.detail == "1 left on model model.layers.1.mlp"
    assert checks[("broken", "torch")].detail == "RuntimeError: something inside"
    assert not checks[("broken", "torch")].passed


def test_reduced_precision_tolerances_scale_with_the_dtype():
    tokens = torch.zeros(1, 1, dtype=torch.long)
    f32, bf16 = Probe(tokens, tokens, torch.float32), Probe(tokens, tokens, torch.bfloat16)
    assert f32.tolerance("logits", 0.5) == 1e-4 and f32.tolerance("logits", 20.0) == pytest.approx(2e-3)
    assert bf16.tolerance("identity", 10.0) == pytest.approx(4 * 2**-7 * 10)


def test_doctor_passes_in_bfloat16():
    model = interp.Model("llama", copy.deepcopy(build("llama").hf).to(torch.bfloat16), tokenizer(), backend="torch")
    checks = doctor_checks(model, backends=["torch", "nnsight"])
    assert all(c.passed for c in checks), [c for c in checks if not c.passed]
    assert by_name(checks)[("logits = HF forward", "torch")].tolerance >= 8 * 2**-7  # in units of bfloat16's rounding


# ------------------------------------------------------------------ load(verify=True)


def test_load_verify_passes_on_tiny_llama():
    model = interp.load("tiny-llama", backend="torch", verify=True)
    assert model.n_layers == 2


def test_load_verify_raises_on_a_wrong_adapter(monkeypatch):
    import interp.model as model_module

    monkeypatch.setattr(model_module, "adapter_for", lambda config: with_attn_scale(adapter_for(config), 2.0))
    with pytest.raises(InterpError, match=r"tiny-llama failed the check 'resid_mid = resid_pre \+ attn_out' on torch "
                                          r"\(difference .* > .*\): largest: resid_mid.0") as info:
        interp.load("tiny-llama", backend="torch", verify=True)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------ the command


def test_cli_doctor_prints_a_table_and_exits_0(interp_cli):
    proc = interp_cli("doctor", "tiny-llama")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "interp doctor: tiny-llama (llama, sequential block, 2 layers, float32, cpu" in out
    for name in ("logits = HF forward", "resid_mid = resid_pre + attn_out", "reads = torch (29 sites)",
                 "interventions = torch", "batched = hooks engine (resid_pre)", "no hook left behind"):
        assert name in out, name
    assert "FAIL" not in out and "all 14 checks passed" in out
    assert "Traceback" not in proc.stderr


def test_cli_doctor_json(interp_cli):
    proc = interp_cli("doctor", "tiny-llama", "--backend", "nnsight", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["passed"] is True and report["model"] == "tiny-llama" and report["backends"] == ["nnsight"]
    assert report["family"] == "llama" and report["block"] == "sequential"
    statuses = {(c["name"], c["backend"]): c["status"] for c in report["checks"]}
    assert statuses[("logits = HF forward", "nnsight")] == "pass"
    assert statuses[("reads = torch (29 sites)", "nnsight")] == "pass"
    assert ("logits = HF forward", "lens") not in statuses
    for c in report["checks"]:
        assert {"name", "backend", "passed", "max_diff", "tolerance", "detail", "refused", "status"} <= set(c)


def test_cli_doctor_bad_input_is_one_line(interp_cli):
    proc = interp_cli("doctor", "tiny-llama", "--backend", "jax")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: unknown backend 'jax': use all, torch, nnsight, lens"


def test_cli_doctor_exits_1_on_a_wrong_adapter(monkeypatch):
    import interp.cli
    import interp.model as model_module

    monkeypatch.setattr(model_module, "adapter_for", lambda config: with_attn_scale(adapter_for(config), 2.0))
    if not getattr(interp.cli, "_plugins_registered_for_tests", False):  # the flag tests/app/conftest.py uses
        interp.cli._register_plugins()
        interp.cli._plugins_registered_for_tests = True
    result = CliRunner().invoke(interp.cli.app, ["doctor", "tiny-llama", "--backend", "torch"], env={"COLUMNS": "250"})
    assert result.exit_code == 1, result.output
    assert "FAIL" in result.output and "checks FAILED: head_out · W_O + b_O = attn_out, resid_mid = resid_pre + attn_out" in result.output
