"""Export a control-vector set as a llama.cpp control-vector GGUF (``--control-vector file.gguf``).

llama.cpp reads ``general.architecture = "controlvector"``, ``controlvector.model_hint`` and
``controlvector.layer_count``, and adds tensor ``direction.N`` (N >= 1) to the output of block N,
our ``resid_post.N``. So ``resid_post.L`` vectors export as ``direction.L``, ``resid_pre.L`` as
``direction.{L-1}``; block 0's output and ``resid_mid`` cannot be steered there. The vectors are
written as float32; steer the same model (here: the GGUF the weights came from) in llama.cpp with
``--control-vector-scaled file.gguf COEFF``.
"""

from __future__ import annotations

from pathlib import Path

from interp.errors import InterpError
from interp.steering.vectors import VectorSet

ARCH = "controlvector"


def llamacpp_layer(kind: str, layer: int) -> int:
    """The N of ``direction.N`` for a vector at ``{kind}.{layer}``."""
    if kind not in ("resid_post", "resid_pre"):
        raise InterpError(f"llama.cpp control vectors act on block outputs; {kind} vectors cannot be exported")
    n = layer if kind == "resid_post" else layer - 1
    if n < 1:
        raise InterpError(f"llama.cpp cannot steer block 0's output: drop {kind}.{layer} before exporting")
    return n


def export_gguf(vectors: VectorSet, path: str | Path, model_hint: str = "llama") -> Path:
    """Write ``vectors`` as a llama.cpp control-vector GGUF at ``path``; returns the path."""
    try:
        import gguf
    except ImportError:
        raise InterpError("exporting a GGUF needs the gguf package: pip install gguf") from None

    path = Path(path)
    if path.is_dir():
        raise InterpError(f"{path} is a folder: give a file name for the GGUF, such as {path / 'vectors.gguf'}")
    if not vectors.layers:
        raise InterpError("no vectors to export")
    layers = [llamacpp_layer(vectors.kind, layer) for layer in vectors.layers]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        writer = gguf.GGUFWriter(str(path), ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(layers))
        for n, vector in zip(layers, vectors.vectors):
            writer.add_tensor(f"direction.{n}", vector.float().contiguous().numpy())
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    except OSError as exc:
        raise InterpError(f"cannot write the GGUF {path}: {exc.strerror or exc}; choose a writable file path") from None
    return path
