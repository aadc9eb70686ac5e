"""Precision by capability (issue 18, item 5): `--precision auto` is bf16 on CUDA and on CPUs with native bf16
(AVX-512-BF16 or AMX), fp32 on other CPUs, decided from the mocked CPU capability; a resumed run keeps the
precision it started with; evaluation is fp32 whatever the training precision, as eval / predict / export."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from robustfer.train import TrainConfig, train, trainer
from robustfer.train.trainer import cpu_native_bf16, resolve_precision, resumed_precision

CPU, CUDA = torch.device("cpu"), torch.device("cuda")

# (torch.backends.cpu.get_cpu_capability(), AVX-512-BF16 flag, AMX tile flag) -> native bf16
CASES = {
    "avx512-bf16 (Zen 4, Cooper Lake)": ("AVX512", True, False, True),
    "amx (Sapphire Rapids)": ("AVX512", True, True, True),
    "amx only": ("AVX512", False, True, True),
    "avx512 without bf16 (Skylake-X)": ("AVX512", False, False, False),
    "avx2 (Zen 2 EPYC)": ("AVX2", False, False, False),
    "bf16 flags, kernels held at AVX2 (ATEN_CPU_CAPABILITY=avx2)": ("AVX2", True, False, False),
    "default": ("DEFAULT", False, False, False),
    "no avx": ("NO AVX", False, False, False),
    "arm sve": ("SVE256", False, False, False),
    "a capability naming bf16": ("AVX512_BF16", False, False, True),
    "a capability naming amx": ("AMX", False, False, True),
}


def _cpu(monkeypatch, capability, avx512_bf16, amx):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(trainer, "_cpu_flags", lambda: pytest.fail("torch.cpu's checks exist: no /proc/cpuinfo"))


@pytest.mark.parametrize("case", list(CASES))
def test_auto_is_bf16_exactly_on_cpus_with_native_bf16(case, monkeypatch):
    capability, avx512_bf16, amx, native = CASES[case]
    _cpu(monkeypatch, capability, avx512_bf16, amx)
    monkeypatch.setattr(trainer, "AUTO_BF16_ON_NATIVE_CPU", True)
    assert cpu_native_bf16() is native
    assert resolve_precision("auto", CPU) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", CUDA) == "bf16"                       # CUDA: bf16 whatever the CPU
    assert resolve_precision("fp32", CPU) == "fp32" and resolve_precision("bf16", CPU) == "bf16"  # asked: as asked
    monkeypatch.setattr(trainer, "AUTO_BF16_ON_NATIVE_CPU", False)        # the switch off: fp32 on every CPU
    assert resolve_precision("auto", CPU) == "fp32" and resolve_precision("auto", CUDA) == "bf16"


def test_without_torch_cpu_checks_the_proc_cpuinfo_flags_decide(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    for flags, native in ((set(), False), ({"avx512f", "avx2"}, False), ({"avx512f", "avx512_bf16"}, True),
                          ({"amx_bf16", "amx_tile"}, True)):
        monkeypatch.setattr(trainer, "_cpu_flags", lambda: flags)
        assert cpu_native_bf16() is native, flags


def test_bad_precision_is_one_line():
    with pytest.raises(trainer.RobustferError, match="--precision 'fp16': use auto, fp32 or bf16"):
        resolve_precision("fp16", CPU)


def _folder_data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for c in ("happiness", "sadness"):
            (root / split / c).mkdir(parents=True)
            for i in range(12):
                Image.fromarray(rng.integers(0, 256, (48, 48), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


def test_a_run_trains_in_the_resolved_precision_keeps_it_on_resume_and_evaluates_in_fp32(tmp_path, monkeypatch):
    trained, evaluated = [], []
    real_epoch, real_predict = trainer.Run.train_epoch, trainer.predict_logits

    def spy_epoch(self, progress):
        trained.append(self.precision)
        return real_epoch(self, progress)

    def spy_predict(*a, **kw):
        evaluated.append(kw.get("precision", "fp32"))
        return real_predict(*a, **kw)
    monkeypatch.setattr(trainer.Run, "train_epoch", spy_epoch)
    monkeypatch.setattr(trainer, "predict_logits", spy_predict)
    monkeypatch.setattr(trainer, "AUTO_BF16_ON_NATIVE_CPU", True)
    data = _folder_data(tmp_path / "data")

    def cfg(out):
        return TrainConfig(dataset="folder", root=str(data), out=str(tmp_path / out), model="compact_s", epochs=2,
                           batch_size=8, threads=1, device="cpu")

    _cpu(monkeypatch, "AVX512", True, False)                        # native bf16: auto trains in bf16
    train(cfg("bf16"), quiet=True, stop_after=1)
    assert trained == ["bf16"] and set(evaluated) == {"fp32"}
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["precision_resolved"] == "bf16"
    _cpu(monkeypatch, "AVX2", False, False)                         # continued on a CPU without: still bf16
    trained.clear()
    train(TrainConfig(dataset="", root="", out=str(tmp_path / "bf16")), resume=True, quiet=True)
    assert trained == ["bf16"]
    trained.clear()
    train(cfg("fp32"), quiet=True, stop_after=1)                    # started there: fp32 ...
    _cpu(monkeypatch, "AMX", False, True)
    train(TrainConfig(dataset="", root="", out=str(tmp_path / "fp32")), resume=True, quiet=True)
    assert trained == ["fp32", "fp32"]                              # ... and kept on an AMX machine
    assert json.loads((tmp_path / "fp32" / "config.json").read_text())["precision_resolved"] == "fp32"
    assert set(evaluated) == {"fp32"}


def test_resumed_precision_reads_the_run_folder(tmp_path):
    assert resumed_precision(tmp_path, "bf16") == "bf16"            # no config.json: what auto gives now
    (tmp_path / "config.json").write_text(json.dumps({"precision": "auto"}))
    assert resumed_precision(tmp_path, "bf16") == "bf16"            # a folder from before precision_resolved
    (tmp_path / "config.json").write_text(json.dumps({"precision": "auto", "precision_resolved": "fp32"}))
    assert resumed_precision(tmp_path, "bf16") == "fp32"
