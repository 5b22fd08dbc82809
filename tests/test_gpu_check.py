"""benchmarks/gpu_check.py: the prepared device check runs in an image without Ray, jsonschema, faiss or
python-multipart, whose gymnasium comes only from the carried subset's pydeps (a subprocess whose imports
fail otherwise), finishes every section without a traceback and records sane figures, here on the CPU with
--quick; on a machine with CUDA, everything lands on the GPU."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import write_image

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
SECTIONS = ("env", "extract", "finetune", "dral", "l2r", "eval")
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# Runs the script as in the device image: Ray, jsonschema, faiss and python-multipart unimportable, and the
# packages gpu_check carries (gymnasium, ...) importable only from the pydeps folder given as argv[1].
WITHOUT_RAY = """
import runpy, sys
from importlib.machinery import PathFinder
BLOCKED = {"ray", "jsonschema", "faiss", "python_multipart", "multipart"}
CARRIED = {"gymnasium", "cloudpickle", "farama_notifications"}
PYDEPS = sys.argv.pop(1)

class Blocked:
    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top in BLOCKED:
            raise ImportError(f"{name} is not installed in the device image")
        if name in CARRIED:
            spec = PathFinder.find_spec(name, [PYDEPS])
            if spec is None:
                raise ImportError(f"{name} is not installed in the device image nor carried in {PYDEPS}")
            return spec
        return None

sys.meta_path.insert(0, Blocked())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def run_script(pydeps: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The script in the device image's situation (see WITHOUT_RAY), with PYTHONPATH=pydeps as there."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "PYTHONPATH": str(pydeps)}
    return subprocess.run([sys.executable, "-c", WITHOUT_RAY, str(pydeps), str(SCRIPT), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def fake_data(src: Path) -> None:
    """A CUHK01 folder (4 identities × 4 JPEGs) and a CIFAR-10 folder (10 classes, 6 train + 2 test PNGs each)."""
    for pid in range(1, 5):
        for n in range(1, 5):
            write_image(src / "cuhk01" / "campus" / f"{pid:04d}{n:03d}.jpg", h=40, w=20, seed=10 * pid + n)
    for i, cls in enumerate(CIFAR_CLASSES):
        for split, count in (("train", 6), ("test", 2)):
            for n in range(count):
                write_image(src / "cifar10" / split / cls / f"{n}.png", h=32, w=32, seed=100 * i + n)


def check_results(results: dict, device: str) -> None:
    sections = results["sections"]
    assert set(sections) == set(SECTIONS)
    for name, s in sections.items():
        assert s["ok"] and s["traceback"] is None, f"{name} failed:\n{s['traceback']}"
    assert results["meta"]["failed_sections"] == []
    assert all(r["tflops"] > 0 for r in sections["env"]["tables"]["matmul"])
    extract = sections["extract"]["tables"]["extract"]
    assert {r["backbone"] for r in extract} == {"resnet18", "mobilenet_v2"}
    assert len(extract) == 8  # decoded and JPEG rows, ours and plain, per backbone
    for r in extract:
        assert r["img_per_s"] > 0 and r["pct_of_peak"] > 0 and r["min_cosine_vs_other"] > 0.9
    finetune = sections["finetune"]["tables"]["finetune"]
    assert {"ours (train_epoch)", "plain fp32"} <= {r["loop"] for r in finetune}
    for r in finetune:
        assert r["img_per_s"] > 0 and math.isfinite(r["last_loss"]) and r["on_device"]
    dral = {r["agent"]: r for r in sections["dral"]["tables"]["dral"]}
    for r in dral.values():
        assert r["finished"] and r["questions"] > 0 and r["questions_per_s"] > 0 and r["cnn_on_device"]
        assert all(d.startswith(device) for d in r["cnn_on"])
    assert dral["on the device"]["agent_on_device"]
    assert dral["as shipped"]["agent_built_on"] == ["cpu"]
    l2r = sections["l2r"]["tables"]["l2r"]
    assert len(l2r) == 2  # the sorter's pre-training and the L2R-AL run
    assert all(r["per_s"] > 0 and r["on_device"] for r in l2r)
    assert [c["cycle"] for c in sections["l2r"]["info"]["experiment"]["cycles"]] == [0, 1]
    for r in sections["eval"]["tables"]["eval"]:
        assert r["seconds"] > 0 and r["same_mAP"] and 0 < r["mAP"] <= 100


@pytest.mark.slow  # every section at tiny sizes in a subprocess: about a minute on 2 loaded cores
def test_quick_cpu_run_without_ray(tmp_path):
    fake_data(tmp_path / "src")
    made = subprocess.run([sys.executable, str(SCRIPT), "--make-subset", str(tmp_path / "src"),
                           str(tmp_path / "subset")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    subset = tmp_path / "subset"
    source = json.loads((subset / "SOURCE.json").read_text())
    assert source["cuhk01"] == {"identities": 4, "images": 16} and source["cifar10"] == {"train": 60, "test": 20}
    assert set(source["pydeps"]) == {"gymnasium", "cloudpickle", "farama_notifications"}

    proc = run_script(subset / "pydeps", "--device", "cpu", "--quick", "--out", str(tmp_path / "out"),
                      "--cuhk01", str(subset / "cuhk01"), "--cifar10", str(subset / "cifar10"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "## dral" in proc.stdout and "failed sections: none" in proc.stdout
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    check_results(results, "cpu")
    packages = results["sections"]["env"]["info"]["packages"]
    assert packages["gymnasium"] == str(subset / "pydeps") and "MISSING" not in packages.values()
    assert "CUHK01 JPEGs" in results["sections"]["extract"]["info"]["images"]
    assert "## eval" in (tmp_path / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quick_cuda_run_puts_everything_on_the_gpu(tmp_path):
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_check import copy_pydeps

    fake_data(tmp_path / "src")
    copy_pydeps(tmp_path / "pydeps")
    proc = run_script(tmp_path / "pydeps", "--device", "cuda", "--quick", "--out", str(tmp_path / "out"),
                      "--cuhk01", str(tmp_path / "src" / "cuhk01"), "--cifar10", str(tmp_path / "src" / "cifar10"))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    check_results(json.loads((tmp_path / "out" / "gpu_check.json").read_text()), "cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_requested_without_cuda_is_refused(capsys):
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_check import main

    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda"])
    assert exc.value.code == 2 and "CUDA is not available" in capsys.readouterr().err
