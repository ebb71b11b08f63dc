"""Backbone registry: sequence encoders that turn a window of features into tokens.

Contract every registered backbone follows (``tests/test_models.py`` asserts it for each):

- It is an ``nn.Module`` built from plain typed arguments, the first being ``n_features``.
- ``forward(x)`` maps x ``(B, T, F)`` float to ``(B, T', D)`` with ``D == self.d_out == d_model``.
- ``self.n_tokens(T)`` gives T' and ``self.token_end(j, T)`` the last input step covered by
  output token j (negative j counts from the end).
- It is causal: output token j depends only on input steps ``<= self.token_end(j, T)``;
  changing later steps leaves it unchanged (within 1e-6). With ``causal=False`` attention sees
  the whole window and ``token_end`` is ``T - 1`` for every token; a sample still sees only
  its own window, so nothing leaks across samples.
- The last output token covers the last input step: ``token_end(-1, T) == T - 1``, so it
  summarises the full window up to the decision time.
- ``self.blocks`` is an ``nn.ModuleList`` of exactly ``depth`` blocks.
"""

from __future__ import annotations

from torch import nn

from plusultra.models.backbones.hybrid import HybridBackbone
from plusultra.models.backbones.moe import MoEBackbone
from plusultra.models.backbones.multiscale import MultiScaleBackbone
from plusultra.models.backbones.ssm import SSMBackbone
from plusultra.models.backbones.tcn import TCNBackbone
from plusultra.models.backbones.transformer import TransformerBackbone

BACKBONES: dict[str, type[nn.Module]] = {
    "hybrid": HybridBackbone,  # patch tokens; attention + dilated causal conv + SSM + gated MLP
    "transformer": TransformerBackbone,  # one token per step; plain pre-norm transformer
    "tcn": TCNBackbone,  # dilated causal temporal convolutions
    "multiscale": MultiScaleBackbone,  # daily / weekly / monthly causal pooling, fused
    "moe": MoEBackbone,  # transformer blocks with a top-k mixture-of-experts MLP
    "ssm": SSMBackbone,  # selective state-space blocks, linear in the window length
}


__all__ = ["BACKBONES"]
