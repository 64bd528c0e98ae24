"""Lightning orchestration of text-to-image / text-to-video GRN training (facts §4.4, §4.7): the objective,
caption dropout, optimiser, EMA and logging. The network is :class:`grn.models.t2iv.T2IVNet`.

Batches hold one kind of sample or both (joint image + video training):

* one kind: ``{"tokens": int64 [B, d, (T,) h, w] index labels, "caption": list of B str}`` — or, instead of
  ``caption``, precomputed features ``"text": float [B, L, D]`` with ``"text_lens": int64 [B]`` and the empty
  caption's ``"null_text": [L0, D]`` (a text token cache, :mod:`grn.datamodules.text_tokens`);
* joint: ``{"image": {...one kind...}, "video": {...one kind...}}``;
* packed (:mod:`grn.datamodules.seq_packing`, the released trainer's sequence packing): samples of any shapes,
  ``{"tokens": list of S int64 [d, (T,) h, w], "rows": [[sample numbers of row 0], ...], "caption": list of S
  str}`` (or the ``text`` / ``text_lens`` / ``null_text`` features, one row per sample); each row is one packed
  sequence with full attention inside each sample only.

The loss is the official one (official update §C4): per token the cross-entropy averaged over the label channels,
per sample the mean over its predicted tokens, and over the samples of a batch ``sum_i w_i·L_i`` with
``w_i ∝ N_i^r`` (``loss_weight_power`` r, N_i the sample's T·h·w; r = 0, the default, is the plain mean).

Index labels are converted to the network's layout (round-major bits for GRN_bit) here, so one token cache serves
both variants. Captions are encoded by a frozen text encoder that is *not* part of the module's state (it is
rebuilt from its config; weights come from local paths) and each distinct caption is encoded once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate

from grn.lit_modules.config import plain_hparams
from grn.lit_modules.optim import adamw
from grn.lit_modules.refiner import RefinementLitModule
from grn.models.t2iv import T2IVNet
from grn.models.text_encoder import encode_memoized
from grn.models.packing import SampleSpec, packed_layout
from grn.objective import (
    conditionable_clips,
    first_frame_clips,
    mix_with_noise_and_mask,
    realised_keep_prob,
    sample_keep_prob,
    sample_weights,
    segment_mean,
    text_sample_losses,
)
from grn.prompts import PREFIXES, as_first_frame_caption, ensure_prefix, sample_task
from grn.sampling.config import SamplerConfig
from grn.sampling.refine import PT_VALUES, RefineResult
from grn.sampling.text import pad_texts, sample_t2iv


class T2IVLitModule(RefinementLitModule):
    """Trains a :class:`T2IVNet` on token maps with captions.

    Args:
        net: Hydra config of the network (``grn.models.t2iv.build_t2iv``).
        text_encoder: Hydra config of the frozen caption encoder (``load_umt5_encoder`` with local paths, or
            ``tiny_text_encoder`` in test/demo configs).
        tokenizer_ckpt: the frozen tokenizer the tokens came from (recorded for decoding at sample time).
        caption_drop_prob: share of captions replaced by ``""`` (the unconditional branch for guidance).
        keep_prob_shift: the shift of :func:`grn.objective.shift_keep_prob` (4 as the released models).
        keep_prob_std: > 0: t = sigmoid(N(keep_prob_mean, std²)) before the shift; <= 0: t ~ U(0, 1) (official).
        pt_value: the pt token's value: ``nominal`` (the drawn t, the old release) or ``realised`` (the share of
            the sample's labels the mask actually kept, the new release's ``precise_spt``, official update §C3;
            sample with ``sampler.pt_value=realised`` then).
        lr, grad_clip: learning rate and max gradient norm (official CLI: 2e-5, 2.0).
        optimizer: ``_partial_`` optimiser config (official CLI: AdamW (0.9, 0.999), weight decay 0.005); 1-D
            parameters and biases get no weight decay.
        lr_scheduler: ``_partial_`` schedule config (default: none, constant LR; the configs warm up over 100 steps).
        ema_decays: one EMA per decay (``ema1`` is used for sampling).
        sampler: sampler settings used for validation samples.
        loss_weight_power: r of the per-sample loss weights ``w_i ∝ (T_i·h_i·w_i)^r`` (the released trainer's
            ``reweight_loss_by_scale``; 0: equal weights, the official default; 0.5: the released script).
        prompt_prefix: the model is trained on captions that start with ``<T2I>`` / ``<T2V>`` (the data adds
            them: ``prompt_prefix`` of the data configs; official update §A6). Training checks that every
            non-empty string caption carries one, and :meth:`sample` adds them to its prompts. Cached caption
            features are taken as given (their cache records whether it was built with prefixes).
        i2v_ratio: share of video clips trained with the official first-frame condition (official update §B1,
            §B10; :func:`grn.objective.text_sample_losses`): latent frame 0's clean tokens are the condition, the
            loss is over frames 1…T-1 only, and a ``"<T2V>"`` caption becomes ``"<I2V>"``. 0 (default, the
            released script): none. Clips whose jsonl line says ``first_frame_condition: true`` (the batch's
            ``first_frame_condition`` flags) are always trained so; packed batches (``rows``) too.
            Sample such a model with ``i2v_mode=first_frame`` (the network's setting).
    """

    def __init__(
        self,
        net: dict,
        text_encoder: dict,
        tokenizer_ckpt: str | None = None,
        caption_drop_prob: float = 0.1,
        keep_prob_shift: float = 4.0,
        keep_prob_mean: float = 0.0,
        keep_prob_std: float = -1.0,
        lr: float = 2e-5,
        optimizer: dict | None = None,
        lr_scheduler: dict | None = None,
        grad_clip: float = 2.0,
        ema_decays: Sequence[float] = (0.9999,),
        ema_warmup: bool = False,
        sampler: dict | None = None,
        pt_value: str = "nominal",
        loss_weight_power: float = 0.0,
        prompt_prefix: bool = False,
        i2v_ratio: float = 0.0,
    ):
        super().__init__()
        if pt_value not in PT_VALUES:
            raise ValueError(f"pt_value={pt_value!r} is invalid: choose one of {' | '.join(PT_VALUES)}")
        if not 0.0 <= float(i2v_ratio) <= 1.0:
            raise ValueError(f"i2v_ratio={i2v_ratio!r} is invalid: it must be in [0, 1]")
        # plain containers in the checkpoint's hyper_parameters (save_hyperparameters reads these locals)
        optimizer = optimizer if optimizer is not None else adamw(betas=(0.9, 0.999), weight_decay=0.005)
        net, text_encoder, sampler, optimizer, lr_scheduler, ema_decays, tokenizer_ckpt = plain_hparams(
            net, text_encoder, sampler, optimizer, lr_scheduler, ema_decays, tokenizer_ckpt)
        self.save_hyperparameters()
        self.net: T2IVNet = instantiate(self.hparams.net)
        self.build_emas(ema_decays, ema_warmup)
        # frozen helpers are kept out of the module tree: never trained, checkpointed or sharded
        self.__dict__["_text_encoder"] = None
        self.__dict__["_text_memo"] = {}

    # ---- captions --------------------------------------------------------------------------------------------
    @property
    def text_encoder(self):
        if self.__dict__["_text_encoder"] is None:
            enc = instantiate(self.hparams.text_encoder)
            if enc.dim != self.net.text_dim:
                raise ValueError(f"the text encoder gives {enc.dim}-dim features but the network expects "
                                 f"text_dim={self.net.text_dim}")
            self.__dict__["_text_encoder"] = enc
        return self.__dict__["_text_encoder"]

    def encode_captions(self, captions: Sequence[str]) -> list[torch.Tensor]:
        """Captions -> ``[L_i, D]`` float32 features on this module's device; each distinct caption is encoded
        once per process (the memo), in one encoder call for all new ones."""
        return encode_memoized(self.text_encoder, self.__dict__["_text_memo"], captions, self.device)

    def _text(self, part: Mapping[str, Any], drop: torch.Tensor | None,
              first_frame: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded caption features ``[B, L, D]`` and lengths ``[B]`` of a batch part; dropped rows get ``""``;
        rows with the first-frame condition get their ``<T2V>`` prefix as ``<I2V>`` (string captions; cached
        features are used as cached)."""
        if "text" in part:
            text, lens = part["text"].float(), part["text_lens"].long()
            if drop is not None and bool(drop.any()):
                # a text token cache ships the empty caption's features: no encoder needed for dropout
                empty = part["null_text"].float() if "null_text" in part else self.encode_captions([""])[0]
                width = max(text.shape[1], empty.shape[0])
                text = F.pad(text, (0, 0, 0, width - text.shape[1]))
                filler = F.pad(empty, (0, 0, 0, width - empty.shape[0]))
                text = torch.where(drop[:, None, None], filler, text)
                lens = torch.where(drop, torch.full_like(lens, empty.shape[0]), lens)
            return text, lens
        captions = list(part["caption"])
        if self.hparams.get("prompt_prefix"):
            bare = [c for c in captions if c and not c.startswith(tuple(PREFIXES.values()))]
            if bare:
                raise ValueError(f"prompt_prefix=true but the caption {bare[0]!r} has no <T2I>/<T2V>/<I2V> prefix: "
                                 "set the data's prompt_prefix too (the data adds the prefixes)")
        if first_frame is not None:
            captions = [as_first_frame_caption(c) if f else c for c, f in zip(captions, first_frame.tolist())]
        if drop is not None:
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        text, lens = pad_texts(self.encode_captions(captions))
        return text.to(self.device), lens.to(self.device)

    def setup(self, stage: str) -> None:
        # load the frozen encoder now: missing weights fail at start-up with one line, not at the first step —
        # unless the data brings cached caption features (then it is loaded only if something samples)
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if not getattr(datamodule, "provides_text_features", False):
            _ = self.text_encoder  # the property loads it

    # ---- data contract ---------------------------------------------------------------------------------------
    @staticmethod
    def parts(batch: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
        """``[(kind, part)]``: the image and/or video parts of a joint batch, or the single part (``packed`` for
        a packed one, which holds both kinds)."""
        if "rows" in batch:
            return [("packed", batch)]
        if "tokens" in batch:
            return [("video" if batch["tokens"].dim() == 5 else "image", batch)]
        found = [(k, batch[k]) for k in ("image", "video") if k in batch]
        if not found:
            raise KeyError(f"a T2I/T2V batch needs 'tokens' or 'image'/'video' parts, got keys {sorted(batch)}")
        return found

    # ---- training --------------------------------------------------------------------------------------------
    def sample_keep_prob(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``[n]`` keep-probabilities of this trainer's distribution, shifted (:mod:`grn.objective`)."""
        hp = self.hparams
        return sample_keep_prob(n, hp.keep_prob_mean, hp.keep_prob_std, self.device, generator,
                                shift=hp.keep_prob_shift)

    def objective(self, batch: Mapping[str, Any], generator: torch.Generator | None = None, drop: bool = True):
        """The official trainer's loss (module docstring): ``(loss, per-kind sample losses, accuracy)``, the
        accuracy (share of correct labels per sample) weighted as the loss."""
        losses, accs, sizes, per_kind = [], [], [], {}
        for kind, part in self.parts(batch):
            step = self._packed_part if "rows" in part else self._plain_part
            for name, (ce, acc, n) in step(kind, part, generator, drop).items():
                losses.append(ce)
                accs.append(acc)
                sizes.append(n)
                per_kind[name] = torch.cat([per_kind[name], ce]) if name in per_kind else ce
        w = sample_weights(torch.cat(sizes), self.hparams.get("loss_weight_power", 0.0))
        return (torch.cat(losses) * w).sum(), per_kind, (torch.cat(accs) * w).sum()

    def _drop_mask(self, b: int, device, generator, drop: bool) -> torch.Tensor | None:
        if drop and self.hparams.caption_drop_prob > 0:
            return torch.rand(b, device=device, generator=generator) < self.hparams.caption_drop_prob
        return None

    def _plain_part(self, kind: str, part: Mapping[str, Any], generator, drop: bool):
        """Same-shape samples, one per row: ``{kind: (ce [B], accuracy [B], tokens per sample [B])}``."""
        x = self.target_labels(part["tokens"])
        b = x.shape[0]
        t = self.sample_keep_prob(b, generator)
        dropped = self._drop_mask(b, x.device, generator, drop)
        first = first_frame_clips(conditionable_clips(x), self.hparams.get("i2v_ratio", 0.0),
                                  part.get("first_frame_condition"), generator)  # official I2V, and the data's flags
        text, lens = self._text(part, dropped, first)
        z, keep = mix_with_noise_and_mask(x, t, self.num_levels, generator)
        pt = realised_keep_prob(keep) if self.hparams.pt_value == "realised" else t
        ce, acc = text_sample_losses(self.net, x, z, pt, text, lens, first, with_accuracy=True)  # [B] each
        n = torch.full((b,), x[0, 0].numel(), device=x.device)  # T·h·w
        return {kind: (ce, acc, n)}

    def _packed_part(self, kind: str, part: Mapping[str, Any], generator, drop: bool):
        """Samples of any shapes packed into rows (``rows``): ``{"image"/"video": (ce, accuracy, tokens)}`` by
        sample shape (one latent frame: image). Clips with the first-frame condition (``i2v_ratio``, the data's
        flags) are laid out in the official I2V form: their clean frame 0 as first-frame tokens, frames 1… as the
        generated ones, the loss over those only, as in plain batches. The loops run over samples, never tokens."""
        tokens = list(part["tokens"])
        s = len(tokens)
        device = tokens[0].device
        shapes = [tok.shape[1:] if tok.dim() == 4 else (1, *tok.shape[1:]) for tok in tokens]  # (T, h, w)
        counts = torch.tensor([int(torch.Size(sh).numel()) for sh in shapes], device=device)
        # every visual token as one row of labels, samples in order, each (t, h, w) row-major (the layout's order)
        flat = torch.cat([tok.reshape(tok.shape[0], -1).t() for tok in tokens])  # [Nv, d] index labels
        x = self.target_labels(flat)  # [Nv, C]
        sid = torch.repeat_interleave(torch.arange(s, device=device), counts)  # the sample of each token
        t = self.sample_keep_prob(s, generator)
        dropped = self._drop_mask(s, device, generator, drop)
        eligible = torch.tensor([sh[0] >= 2 for sh in shapes], device=device)  # clips of >= 2 latent frames
        first = first_frame_clips(eligible, self.hparams.get("i2v_ratio", 0.0), part.get("first_frame_condition"),
                                  generator)  # bool [S] or None
        text, lens = self._text(part, dropped, first)
        z, keep = mix_with_noise_and_mask(x, t[sid], self.num_levels, generator)
        pt = segment_mean(keep.float().mean(1), sid, s) if self.hparams.pt_value == "realised" else t
        cond = torch.zeros(s, dtype=torch.bool, device=device) if first is None else first
        # frame 0 of a conditioned clip: the first h·w tokens of its segment
        frame = torch.tensor([h * w for _, h, w in shapes], device=device)
        within = torch.arange(x.shape[0], device=device) - (torch.cumsum(counts, 0) - counts)[sid]
        is_first = cond[sid] & (within < frame[sid])  # [Nv]
        gen = ~is_first
        specs = [SampleSpec(int(f) - int(c), int(h), int(w), int(n), first_frame=bool(c))
                 for (f, h, w), n, c in zip(shapes, lens.tolist(), cond.tolist())]
        layout = packed_layout(specs, part["rows"]).to(device)
        valid = torch.arange(text.shape[1], device=text.device)[None] < lens[:, None]
        logits = self.net.forward_layout(layout, z[gen], pt, text[valid],
                                         first_labels=x[is_first] if first is not None else None).float()
        x, sid = x[gen], sid[gen]  # [Ng, C]: the predicted tokens, logits [Ng, C, K]
        ce = segment_mean(F.cross_entropy(logits.transpose(1, 2), x, reduction="none").mean(1), sid, s)
        acc = segment_mean((logits.argmax(-1) == x).float().mean(1), sid, s)
        video = torch.tensor([sh[0] > 1 for sh in shapes], device=device)
        out = {}
        for name, pick in (("image", ~video), ("video", video)):
            if bool(pick.any()):
                out[name] = (ce[pick], acc[pick], counts[pick])
        return out

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        loss, per_kind, acc = self.objective(batch)
        n = sum(v.numel() for v in per_kind.values())
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/acc", acc, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/samples", float(n), on_step=True, on_epoch=False, batch_size=1)
        for kind, v in per_kind.items():
            self.log(f"train/loss_{kind}", v.mean(), on_step=True, on_epoch=False, batch_size=v.numel())
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        g = torch.Generator(device=self.device).manual_seed(1000 + batch_idx)
        with self.ema_weights():
            loss, per_kind, _ = self.objective(batch, generator=g, drop=False)
        n = sum(v.numel() for v in per_kind.values())
        self.log("val/loss", loss, prog_bar=True, on_epoch=True, sync_dist=True, batch_size=n)

    def learning_rate(self) -> float:
        return float(self.hparams.lr)

    # ---- sampling --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        captions: Sequence[str],
        label_shape: Sequence[int],
        generator: torch.Generator | None = None,
        negative_prompt: str = "",
        first_frame: torch.Tensor | None = None,
        sampler: SamplerConfig | None = None,
        **overrides: Any,
    ) -> RefineResult:
        """Labels for ``captions`` with the current weights: index labels ``[B, d, (T,) h, w]``.

        ``label_shape`` is the network's ``(C, h, w)`` or ``(C, T, h, w)``; ``first_frame`` (network layout
        ``[B, C, h, w]``) makes it image-to-video. With ``prompt_prefix`` the captions get the task prefix the
        model was trained with (:func:`grn.prompts.sample_task`); the negative prompt stays bare, as in the official tools."""
        if self.hparams.get("prompt_prefix"):
            task = sample_task(len(label_shape) == 3, first_frame is not None, self.hparams.get("i2v_ratio"))
            captions = [ensure_prefix(c, task) for c in captions]
        return sample_t2iv(self.net, self.encode_captions, captions, label_shape, generator, negative_prompt,
                           first_frame, sampler, **overrides)

