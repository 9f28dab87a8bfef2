"""A toy ReLU dictionary with the interface `Model.attach` uses, independent of `interp.dictionary` (for tests)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

TOY_SITES = ["resid_post.0", "mlp_out.1"]  # where `toy_spliced` (tests/conftest.py) attaches one each


@dataclass
class ToyDictionary:
    """A ReLU dictionary with the interface `Model.attach` uses (independent of `interp.dictionary`)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    site: str
    out_site: str | None = None

    d_in = property(lambda self: self.W_enc.shape[0])
    d_sae = property(lambda self: self.W_enc.shape[1])
    d_out = property(lambda self: self.W_dec.shape[1])

    def encode(self, x):
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, z, x=None):
        return z @ self.W_dec + self.b_dec


def toy(d_in: int, d_out: int, site: str, out_site: str | None = None, d_sae: int = 96, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return ToyDictionary(torch.randn(d_in, d_sae, generator=g) / d_in**0.5, torch.randn(d_sae, generator=g) * 0.1,
                         torch.randn(d_sae, d_out, generator=g) / d_sae**0.5, torch.randn(d_out, generator=g) * 0.1,
                         site, out_site)
