"""experiments/train_cifar.py: the plan it prints (commands and the state of each checkpoint:
missing, complete, interrupted, or complete with other settings), without training anything."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import jax
import pytest

from rsjax.checkpoints import save_checkpoint
from rsjax.models import get_model_spec
from rsjax.train import RESUME_KIND, resume_state_path

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "train_cifar.py"


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RSJAX_CACHE", str(tmp_path / "rsjax-cache"))


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("train_cifar_script", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # the script's dataclass looks its module up
    spec.loader.exec_module(mod)
    yield mod
    sys.modules.pop(spec.name, None)


@pytest.fixture
def fake_shared(tmp_path) -> Path:
    """The three inputs the script checks for (their content is not read by the plan)."""
    root = tmp_path / "shared" / "data" / "cifar10"
    (root / "train_jpeg").mkdir(parents=True)
    (root / "resnet20-12fca82f.th").write_bytes(b"")
    (root / "test_jpeg.npz").write_bytes(b"")
    return tmp_path / "shared"


def _plan_lines(out: str) -> dict[str, tuple[str, str]]:
    """name -> (state line, command line) of the printed plan."""
    lines = out.splitlines()
    start = lines.index("plan:")
    plan = {}
    for state, command in zip(lines[start + 1::2], lines[start + 2::2]):
        if not state.startswith("  ") or state.startswith("    "):
            break
        name, _, rest = state.strip().partition(" ")
        plan[name] = (rest.strip(), command.strip())
    return plan


def test_plan_shows_each_step_state_and_command(script, fake_shared, tmp_path, capsys):
    out = tmp_path / "models"
    variables = jax.device_get(get_model_spec("cifar_resnet20").init(jax.random.PRNGKey(0)))
    save_checkpoint(out / "resnet20.ckpt", "cifar_resnet20", variables, {"source": "test"})
    done = {"epochs": 3, "epochs_done": 3, "n_train": 50_000}
    save_checkpoint(out / "r20_gauss_0.12.ckpt", "cifar_resnet20", variables, done)
    save_checkpoint(out / "r20_pgd_0.5.ckpt", "cifar_resnet20", variables, {**done, "epochs_done": 1, "epochs": 1})
    save_checkpoint(out / "r20_gauss_0.25.ckpt", "cifar_resnet20", variables, {**done, "epochs_done": 1})
    save_checkpoint(resume_state_path(out / "r20_gauss_0.25.ckpt"), "cifar_resnet20", {},
                    {"kind": RESUME_KIND, "epochs_done": 1, "fingerprint": {"epochs": 3}})

    assert script.main(["--shared", str(fake_shared), "--out", str(out), "--epochs", "3", "--plan-only",
                        "--time-batches", "0"]) == 0
    plan = _plan_lines(capsys.readouterr().out)
    assert list(plan) == ["resnet20", "r20_gauss_0.12", "r20_gauss_0.25", "r20_gauss_0.5", "r20_pgd_0.5"]
    assert plan["resnet20"][0] == "complete; skip"
    assert plan["r20_gauss_0.12"][0] == "complete (3 epochs on 50000 images); skip"
    assert plan["r20_gauss_0.25"][0].startswith("interrupted after 1/3 epochs: resume; run")
    assert plan["r20_gauss_0.5"][0] == "missing; run"
    assert "not the requested 3 epochs on 50000 images" in plan["r20_pgd_0.5"][0]

    data = fake_shared / "data" / "cifar10"
    assert plan["resnet20"][1] == (f"rsjax convert --arch cifar_resnet20 --weights {data / 'resnet20-12fca82f.th'}"
                                   f" --out {out / 'resnet20.ckpt'}")
    gauss = plan["r20_gauss_0.5"][1]
    for part in (f"--init {out / 'resnet20.ckpt'}", f"--dataset imagefolder:{data / 'train_jpeg'}",
                 f"--eval-data npz:{data / 'test_jpeg.npz'}", "--recipe gaussian --sigma 0.5", "--epochs 3",
                 "--augment flip-crop", f"--out {out / 'r20_gauss_0.5.ckpt'}"):
        assert part in gauss, part
    assert "--recipe pgd --eps 0.5" in plan["r20_pgd_0.5"][1] and "--per-class" not in gauss


def test_limit_selects_images_of_every_class_and_missing_inputs_fail(script, fake_shared, tmp_path, capsys):
    assert script.main(["--shared", str(fake_shared), "--out", str(tmp_path / "m"), "--limit", "95",
                        "--models", "r20_pgd_0.5", "--plan-only", "--time-batches", "0"]) == 0
    plan = _plan_lines(capsys.readouterr().out)
    assert list(plan) == ["resnet20", "r20_pgd_0.5"] and "--per-class 10" in plan["r20_pgd_0.5"][1]
    assert script.main(["--shared", str(tmp_path / "nowhere"), "--plan-only"]) == 2
    assert "missing inputs" in capsys.readouterr().err
