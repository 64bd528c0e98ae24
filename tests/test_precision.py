"""``precision: auto``: the CPU rule from the cpuinfo flags (AMX-BF16 or AVX512-BF16 -> bf16, neither -> fp32),
CUDA -> bf16, the decision logged once with its reason, and ``trainer.precision: auto`` for Lightning."""

from __future__ import annotations

import logging

import pytest
import torch
from hydra.utils import instantiate

from grn import precision as P

# a trimmed /proc/cpuinfo of each kind of CPU: two processors, as the real file lists one block per core
CPUINFO = """processor\t: {n}
vendor_id\t: {vendor}
model name\t: {model}
flags\t\t: fpu vme sse sse2 avx avx2 {flags}

"""
CPUS = {
    "sapphire_rapids": ("GenuineIntel", "Intel(R) Xeon(R) Platinum 8480+",
                        "avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8"),
    "zen4": ("AuthenticAMD", "AMD EPYC", "avx512f avx512_vnni avx512_bf16"),
    "skylake": ("GenuineIntel", "Intel(R) Xeon(R) Gold 6148", "avx512f avx512cd"),
    "zen2": ("AuthenticAMD", "AMD EPYC 7742", ""),
}


@pytest.fixture(autouse=True)
def fresh_log(monkeypatch):
    """Each test starts with no decision logged yet."""
    monkeypatch.setattr(P, "_logged", set())


def write_cpuinfo(tmp_path, cpu: str):
    vendor, model, flags = CPUS[cpu]
    path = tmp_path / "cpuinfo"
    path.write_text("".join(CPUINFO.format(n=n, vendor=vendor, model=model, flags=flags) for n in range(2)))
    return path


@pytest.mark.parametrize("cpu, expected, flag", [
    ("sapphire_rapids", "bf16", "amx_bf16"),   # AMX first: it is the one that decides where both are present
    ("zen4", "bf16", "avx512_bf16"),
    ("skylake", "fp32", None),                 # AVX-512 without its bf16 extension: bf16 is emulated, slower
    ("zen2", "fp32", None),
])
def test_auto_rule_on_cpu_follows_the_cpuinfo_flags(tmp_path, cpu, expected, flag):
    flags = P.cpu_flags(write_cpuinfo(tmp_path, cpu))
    assert "avx2" in flags and ("amx_bf16" in flags) == (cpu == "sapphire_rapids")
    assert P.cpu_bf16_flag(flags) == flag
    assert P.resolve_precision("auto", "cpu", flags) == expected
    assert P.lightning_precision("auto", "cpu", flags) == ("bf16-mixed" if expected == "bf16" else "32-true")


def test_auto_is_bf16_on_cuda_whatever_the_cpu(tmp_path):
    none = P.cpu_flags(write_cpuinfo(tmp_path, "zen2"))
    assert P.resolve_precision("auto", "cuda:1", none) == "bf16"
    assert P.resolve_precision("auto", torch.device("cuda", 0), none) == "bf16"
    assert P.lightning_precision("auto", "gpu", none) == "bf16-mixed"
    assert P.resolve_precision("auto", "mps", none) == "fp32"  # no rule measured for other devices


def test_explicit_choices_pass_through_and_bad_ones_fail(tmp_path):
    flags = P.cpu_flags(write_cpuinfo(tmp_path, "sapphire_rapids"))
    assert P.resolve_precision("fp32", "cpu", flags) == "fp32"
    assert P.resolve_precision("bf16", "cpu", set()) == "bf16"
    assert P.lightning_precision("16-mixed", "gpu") == "16-mixed"  # Lightning's own values are left alone
    with pytest.raises(ValueError, match=r"precision='fp16' is invalid: choose one of auto \| fp32 \| bf16"):
        P.resolve_precision("fp16", "cpu")


def test_unreadable_cpuinfo_falls_back_to_torch_probes(tmp_path, monkeypatch):
    assert P.cpu_flags(tmp_path / "missing") is None
    (tmp_path / "arm").write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert P.cpu_flags(tmp_path / "arm") is None  # no x86 flags line
    monkeypatch.setattr(P, "cpu_flags", lambda: None)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert P.cpu_bf16_flag() == "avx512_bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    assert P.cpu_bf16_flag() is None


def test_the_decision_is_logged_once_with_the_flag(tmp_path, caplog):
    flags = P.cpu_flags(write_cpuinfo(tmp_path, "zen4"))
    with caplog.at_level(logging.INFO, logger="grn.precision"):
        for _ in range(3):
            P.resolve_precision("auto", "cpu", flags)
        P.resolve_precision("fp32", "cpu", flags)  # an explicit choice is not a decision
    lines = [r.getMessage() for r in caplog.records if r.name == "grn.precision"]
    assert lines == ["precision=auto on cpu: bf16 (the CPU has avx512_bf16)"]


def test_autocast_context_casts_matmuls_only_for_bf16(tmp_path):
    lin = torch.nn.Linear(4, 4)
    x = torch.randn(2, 4)
    with P.autocast("bf16", "cpu"):
        assert lin(x).dtype == torch.bfloat16
    with P.autocast("fp32", "cpu"):
        assert lin(x).dtype == torch.float32


@pytest.mark.parametrize("cpu, expected", [("zen4", "bf16-mixed"), ("skylake", "32-true")])
def test_trainer_precision_auto_resolves_for_lightning(compose_cfg, tmp_path, monkeypatch, cpu, expected):
    from grn.entrypoints.train import trainer_precision

    flags = P.cpu_flags(write_cpuinfo(tmp_path, cpu))
    monkeypatch.setattr(P, "cpu_flags", lambda: flags)
    cfg = compose_cfg("train", ["task=c2i", "trainer=cpu", "trainer.precision=auto"])
    resolved = trainer_precision(cfg.trainer)
    assert resolved == expected
    trainer = instantiate(cfg.trainer, precision=resolved, logger=False, enable_checkpointing=False)
    assert trainer.precision == expected  # Lightning accepts what auto became
    # FSDP2: the strategy's mixed-precision policy casts, so autocast stays off whatever the CPU
    cfg = compose_cfg("train", ["task=c2i", "trainer=fsdp", "trainer.accelerator=cpu", "trainer.precision=auto"])
    assert trainer_precision(cfg.trainer) == "32-true"
