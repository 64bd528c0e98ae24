"""GAN losses for tokenizer training (hinge discriminator loss, VQGAN adaptive generator weight)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["hinge_d_loss", "generator_adv_loss", "adaptive_weight"]


def hinge_d_loss(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    """``0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))``; logits of any shape → 0-dim tensor."""
    return 0.5 * (F.relu(1.0 - logits_real).mean() + F.relu(1.0 + logits_fake).mean())


def generator_adv_loss(logits_fake: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean(logits_fake)`` → 0-dim tensor."""
    return -logits_fake.mean()


def adaptive_weight(
    nll_loss: torch.Tensor, g_loss: torch.Tensor, last_layer_weight: torch.Tensor, max_weight: float = 1e4
) -> torch.Tensor:
    """VQGAN balance ``||∇_w nll|| / (||∇_w g|| + 1e-4)``, w the decoder's last layer, clamped to [0, max].

    Scales the adversarial term so its gradient at the output layer is as large as the reconstruction one.
    Both losses are 0-dim and must depend on ``last_layer_weight``; the graph is kept (``retain_graph``) for
    the real backward. Returns a detached 0-dim tensor; 1 when there is no graph (eval, ``torch.no_grad``).
    """
    if not (torch.is_grad_enabled() and nll_loss.requires_grad and g_loss.requires_grad):
        return torch.ones((), device=nll_loss.device)
    (nll_grad,) = torch.autograd.grad(nll_loss, last_layer_weight, retain_graph=True)
    (g_grad,) = torch.autograd.grad(g_loss, last_layer_weight, retain_graph=True)
    weight = torch.linalg.vector_norm(nll_grad) / (torch.linalg.vector_norm(g_grad) + 1e-4)
    return weight.clamp(0.0, max_weight).detach()
