"""Caption encoder for T2I/T2V: the umT5-XXL encoder through ``transformers`` (facts §4.1), and a tiny offline
stand-in for tests and demos.

Contract: :meth:`TextEncoder.encode_texts` takes N captions and returns N float tensors ``[L_i, D]`` — each
caption tokenised with the special end token, truncated at 512 tokens, encoded, and trimmed to its true length
``L_i`` (1 <= L_i <= 512). D = 4096 for umT5-XXL.

The official pipeline pads every caption to 512 tokens and runs the encoder over all of them. Padding is masked
out of every attention, so a caption's outputs do not depend on it; we tokenise with the same padding and
truncation and then run the encoder only up to the longest caption of the batch (the same numbers, less work).

Weights are read from local paths only, never downloaded:

* ``weights``: the official ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's T5 layout; renamed to transformers'
  ``UMT5EncoderModel`` names on load — same maths: unscaled attention with per-layer relative position buckets,
  gated-GELU(tanh) FFN, RMS norms), or a transformers folder with ``config.json`` and the weights;
* ``tokenizer``: the ``umt5-xxl`` tokenizer folder shipped with the official weights (or any folder
  ``AutoTokenizer`` reads).
"""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

MAX_TEXT_LEN = 512

# transformers' UMT5Config for umT5-XXL's encoder (facts §4.1: vocab 256384, dim 4096, ffn 10240, 64 heads,
# 24 layers, 32 relative-position buckets per layer).
UMT5_XXL = dict(
    vocab_size=256384,
    d_model=4096,
    d_kv=64,
    d_ff=10240,
    num_layers=24,
    num_heads=64,
    relative_attention_num_buckets=32,
    relative_attention_max_distance=128,
    feed_forward_proj="gated-gelu",
    layer_norm_epsilon=1e-6,
    dropout_rate=0.0,
)

# Wan T5 encoder names -> transformers UMT5EncoderModel names ({i} = layer).
_WAN_TO_HF_LAYER = {
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def clean_caption(text: str) -> str:
    """The official ``whitespace`` clean: fix mojibake (``ftfy``, when installed), unescape HTML twice, collapse
    runs of whitespace, strip."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs broken unicode; captions without it are unchanged
        pass
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip()


def wan_t5_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official (Wan) umT5 encoder state dict to ``UMT5EncoderModel`` names."""
    out = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        elif m := re.match(r"^blocks\.(\d+)\.(.+)$", key):
            if m[2] not in _WAN_TO_HF_LAYER:
                raise KeyError(f"unexpected umT5 encoder key {key!r}")
            out[f"encoder.block.{m[1]}.{_WAN_TO_HF_LAYER[m[2]]}"] = value
        else:
            raise KeyError(f"unexpected umT5 encoder key {key!r} (is this the encoder-only checkpoint?)")
    return out


def wan_t5_shape(state: dict[str, torch.Tensor]) -> dict[str, int]:
    """The ``UMT5Config`` shape fields an official (Wan) encoder state dict implies: vocabulary and width from the
    token embedding, depth from the block indices, FFN width from ``ffn.fc1``, heads from the relative position
    table ``[buckets, heads]`` (umT5-XXL: 256384, 4096, 24, 10240, 64 heads of 64)."""
    try:
        vocab, d_model = state["token_embedding.weight"].shape
        heads = state["blocks.0.pos_embedding.embedding.weight"].shape[1]
        return dict(vocab_size=int(vocab), d_model=int(d_model), num_heads=int(heads),
                    d_kv=int(state["blocks.0.attn.q.weight"].shape[0]) // int(heads),
                    d_ff=int(state["blocks.0.ffn.fc1.weight"].shape[0]),
                    num_layers=1 + max(int(m[1]) for m in map(re.compile(r"^blocks\.(\d+)\.").match, state) if m),
                    relative_attention_num_buckets=int(state["blocks.0.pos_embedding.embedding.weight"].shape[0]))
    except (KeyError, ValueError) as err:
        raise KeyError(f"not an umT5 encoder state dict in the official layout (missing {err})") from None


def hf_to_wan_t5(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of :func:`wan_t5_to_hf` (writes the official layout)."""
    inverse = {v: k for k, v in _WAN_TO_HF_LAYER.items()}
    out = {}
    for key, value in state.items():
        if key == "shared.weight":
            out["token_embedding.weight"] = value
        elif key == "encoder.final_layer_norm.weight":
            out["norm.weight"] = value
        elif m := re.match(r"^encoder\.block\.(\d+)\.(.+)$", key):
            out[f"blocks.{m[1]}.{inverse[m[2]]}"] = value
    return out


class TextEncoder(nn.Module):
    """A frozen tokenizer + T5-family encoder (``UMT5EncoderModel``) that turns captions into ``[L_i, D]``
    features. Always in eval mode, never trained."""

    def __init__(self, model: nn.Module, tokenizer, max_length: int = MAX_TEXT_LEN, clean: bool = True):
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.clean = clean

    @property
    def dim(self) -> int:
        return int(self.model.config.d_model)

    def train(self, mode: bool = True) -> "TextEncoder":  # frozen: stays in eval mode
        return super().train(False)

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ``(ids, mask)`` int64 ``[N, max_length]``: end token added, truncated and padded at
        ``max_length``."""
        if isinstance(texts, str):
            raise TypeError("encode_texts takes a list of captions, not one string")
        texts = [clean_caption(t) if self.clean else t for t in texts]
        tok = self.tokenizer(texts, padding="max_length", truncation=True, max_length=self.max_length,
                             add_special_tokens=True, return_tensors="pt")
        return tok["input_ids"], tok["attention_mask"]

    @torch.no_grad()
    def encode_texts(self, texts: Sequence[str], batch_size: int = 16) -> list[torch.Tensor]:
        """Captions -> one float tensor ``[L_i, D]`` per caption (on the encoder's device, in its dtype)."""
        ids, mask = self.tokenize(texts)
        device = next(self.model.parameters()).device
        out: list[torch.Tensor] = []
        for start in range(0, len(ids), batch_size):  # bounded memory; a loop over batches, not tokens
            m = mask[start : start + batch_size]
            lens = m.sum(1)
            longest = int(lens.max())  # padding beyond the longest caption changes nothing: skip it
            hidden = self.model(input_ids=ids[start : start + batch_size, :longest].to(device),
                                attention_mask=m[:, :longest].to(device)).last_hidden_state
            out.extend(h[:n] for h, n in zip(hidden, lens.tolist()))
        return out

    def forward(self, texts: Sequence[str]) -> list[torch.Tensor]:
        return self.encode_texts(texts)


def encode_memoized(encoder: TextEncoder, memo: dict[str, torch.Tensor], captions: Sequence[str],
                    device: torch.device | str) -> list[torch.Tensor]:
    """Captions -> float32 ``[L_i, D]`` features on ``device``. ``memo`` keeps each caption's features, so every
    distinct caption goes through the encoder once (all new ones in one call)."""
    new = sorted({c for c in captions if c not in memo})
    if new:
        for caption, feats in zip(new, encoder.encode_texts(new), strict=True):
            memo[caption] = feats.float()
    return [memo[c].to(device) for c in captions]


def _missing(path: Path, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"{what} not found: {path} (put the umt5-xxl folder of the HF repo bytedance-research/GRN there: "
        "models_t5_umt5-xxl-enc-bf16.pth and the umt5-xxl/ tokenizer; nothing is downloaded)"
    )


def load_umt5_encoder(
    weights: str | Path,
    tokenizer: str | Path,
    dtype: str | torch.dtype = "bfloat16",
    device: str | torch.device = "cpu",
    max_length: int = MAX_TEXT_LEN,
    config: dict | None = None,
    dim: int | None = None,
) -> TextEncoder:
    """The umT5-XXL encoder from local files (see the module docstring); a missing file is a one-line error.

    ``config`` overrides fields of the umT5-XXL shape (:data:`UMT5_XXL`) for an official-layout ``.pth`` of
    another size. ``dim``: the feature width the caller expects (configs state it so that the generator's
    ``text_dim`` can follow it); checked against the loaded model."""
    from transformers import AutoTokenizer, UMT5Config, UMT5EncoderModel

    weights, tokenizer = Path(weights), Path(tokenizer)
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if not weights.exists():
        raise _missing(weights, "umT5-XXL encoder weights")
    if not tokenizer.is_dir():
        raise _missing(tokenizer, "umT5-XXL tokenizer folder")
    if weights.is_dir():
        if not (weights / "config.json").is_file():
            raise _missing(weights / "config.json", "transformers config of the umT5 encoder")
        model = UMT5EncoderModel.from_pretrained(weights, local_files_only=True, dtype=dtype)
    else:
        wan = torch.load(weights, map_location="cpu", weights_only=True, mmap=True)
        shape = {**wan_t5_shape(wan), **(config or {})}
        state = wan_t5_to_hf(wan)
        with torch.device("meta"):
            model = UMT5EncoderModel(UMT5Config(**{**UMT5_XXL, **shape}))
        model.load_state_dict(state, strict=True, assign=True)
        model = model.to(dtype)
    if dim is not None and model.config.d_model != dim:
        raise ValueError(f"{weights} holds a {model.config.d_model}-wide encoder, the config says dim={dim}")
    tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    return TextEncoder(model.to(device), tok, max_length)


def tiny_text_encoder(
    dim: int = 32, num_layers: int = 2, num_heads: int = 4, seed: int = 0, max_length: int = MAX_TEXT_LEN
) -> TextEncoder:
    """A randomly initialised small umT5 encoder with a byte-level tokenizer (ByT5's: one token per UTF-8 byte
    plus the end token), built offline and identical for the same seed. For tests and demos only: its features
    carry the characters of a caption, not its meaning."""
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    if dim % num_heads:
        raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
    tok = ByT5Tokenizer()
    cfg = UMT5Config(**{**UMT5_XXL, "vocab_size": len(tok), "d_model": dim, "d_kv": dim // num_heads,
                        "d_ff": 2 * dim, "num_layers": num_layers, "num_heads": num_heads})
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        model = UMT5EncoderModel(cfg)
    return TextEncoder(model, tok, max_length)


def caption_token_counts(text_encoder: dict, captions: Sequence[str]) -> list[int]:
    """How many tokens the encoder of config ``text_encoder`` gives each caption (end token included, truncated
    at its ``max_length``: the official ``tlen`` clip), from its tokenizer alone — the umT5-XXL weights are not
    loaded. For a registered encoder config (``load_umt5_encoder`` or ``tiny_text_encoder``); sequence packing
    counts a sample's text with it before anything is encoded."""
    from transformers import AutoTokenizer, ByT5Tokenizer

    target = str(text_encoder.get("_target_", ""))
    max_length = int(text_encoder.get("max_length", MAX_TEXT_LEN))
    if target.endswith("tiny_text_encoder"):
        tok = ByT5Tokenizer()
    elif target.endswith("load_umt5_encoder"):
        folder = Path(text_encoder["tokenizer"])
        if not folder.is_dir():
            raise _missing(folder, "umT5-XXL tokenizer folder")
        tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    else:
        raise ValueError(f"cannot count caption tokens for text encoder {target!r}: use load_umt5_encoder or "
                         "tiny_text_encoder")
    ids = tok([clean_caption(c) for c in captions], truncation=True, max_length=max_length,
              add_special_tokens=True)["input_ids"]
    return [len(i) for i in ids]
