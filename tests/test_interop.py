import os
import pickle

import jax
import numpy as np
import pytest

from tests.conftest import RELEASE_TABLE, release_path
from tests.helpers import irregular_plan
from thinjax.checkpoint import export_model, load_model
from thinjax.cost import count
from thinjax.interop.torch import (
    CheckpointFormatError,
    import_checkpoint,
    infer_plan,
    load_state_dict,
    to_state_dict,
    to_variables,
)
from thinjax.models.resnet import ResNet, random_variables
from thinjax.plan import plan_from_width

torch = pytest.importorskip("torch")
from tests.torch_reference import TorchResNet  # noqa: E402

torch.set_num_threads(2)


def torch_logits(plan, sd, x_nhwc):
    net = TorchResNet(plan).eval()
    missing = net.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in sd.items()
                                   if not k.endswith(("num_batches_tracked", "n_averaged"))},
                                  strict=True)
    assert not missing.missing_keys
    with torch.no_grad():
        return net(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def jax_logits(plan, variables, x):
    return np.asarray(jax.jit(ResNet(plan).apply)(variables, x))


@pytest.mark.parametrize("name", sorted(RELEASE_TABLE))
def test_release_checkpoints_import_and_match_pytorch(name):
    path = release_path(name)
    params, _ = RELEASE_TABLE[name]
    plan, variables = import_checkpoint(path)
    assert count(plan).params == params
    size = 224 if plan.stem == "imagenet" else 32
    x = np.random.default_rng(0).standard_normal((4, size, size, 3)).astype(np.float32)
    sd = {k[len("module."):] if k.startswith("module.") else k: v
          for k, v in load_state_dict(path).items()}
    ref = torch_logits(plan, sd, x)
    got = jax_logits(plan, variables, x)
    # 1e-4 relative, measured against the logits' scale
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


@pytest.mark.parametrize("plan_fn", [lambda: plan_from_width("resnet18", 16),
                                     lambda: plan_from_width("resnet50_cifar", 16, base_width=64),
                                     irregular_plan],
                         ids=["torchvision-r18", "r50-cifar", "irregular"])
def test_torchvision_names_round_trip_through_every_format(plan_fn, tmp_path):
    plan = plan_fn()
    variables = random_variables(plan, seed=3)
    sd = to_state_dict(plan, variables)
    assert "conv1.weight" in sd and "fc.weight" in sd
    size = 64 if plan.stem == "imagenet" else 32
    x = np.random.default_rng(1).standard_normal((2, size, size, 3)).astype(np.float32)
    want = torch_logits(plan, to_state_dict(plan, variables, "release"), x)
    # .pt (torchvision names, with num_batches_tracked), .safetensors and .npz with release names
    pt = tmp_path / "m.pth"
    torch.save({**{k: torch.from_numpy(v) for k, v in sd.items()},
                "bn1.num_batches_tracked": torch.tensor(7)}, pt)
    from safetensors.numpy import save_file
    st = tmp_path / "m.safetensors"
    save_file({"module." + k: v for k, v in to_state_dict(plan, variables, "release").items()}, st)
    npz = tmp_path / "m.npz"
    np.savez(npz, n_averaged=np.array(5), **sd)
    for f in (pt, st, npz):
        p2, v2 = import_checkpoint(str(f))
        assert p2 == plan
        np.testing.assert_allclose(jax_logits(p2, v2, x), want, rtol=1e-4,
                                   atol=1e-4 * np.abs(want).max())


def test_state_dict_that_fits_no_resnet_names_the_key():
    plan = plan_from_width("resnet20", 4)
    sd = to_state_dict(plan, random_variables(plan))
    bad = dict(sd)
    bad["layer2.1.conv1.weight"] = np.zeros((8, 5, 3, 3), np.float32)  # wrong input channels
    with pytest.raises(CheckpointFormatError,
                       match=r"layer2\.1\.conv1\.weight: shape \(8, 5, 3, 3\)"):
        to_variables(bad)
    extra = dict(sd, **{"layer1.0.se.weight": np.zeros(3)})
    with pytest.raises(CheckpointFormatError, match=r"unexpected key 'layer1\.0\.se\.weight'"):
        infer_plan(extra)
    missing = {k: v for k, v in sd.items() if not k.startswith("layer2.0.bn2")}
    with pytest.raises(CheckpointFormatError, match=r"missing key 'layer2\.0\.bn2\.\w+'"):
        to_variables(missing)
    nostem = {k: v for k, v in sd.items() if not k.startswith("conv1")}
    with pytest.raises(CheckpointFormatError, match="missing key 'conv1.weight'"):
        infer_plan(nostem)
    wide = dict(sd, **{"conv1.weight": np.zeros((4, 3, 5, 5), np.float32)})
    with pytest.raises(CheckpointFormatError, match="stem kernel 5x5"):
        infer_plan(wide)


def test_corrupt_and_unsafe_files_are_refused(tmp_path):
    src = release_path("resnet20_width4_cifar10_ema.pt")
    data = open(src, "rb").read()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError, match="trunc.pt: cannot read this .pt checkpoint"):
        import_checkpoint(str(trunc))

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    with pytest.raises(CheckpointFormatError, match="evil.pt: not a plain tensor checkpoint") \
            as e:
        import_checkpoint(str(evil))
    # issue 11, case 9: no advice to load an untrusted file with weights_only=False
    assert "never executes code" in str(e.value) and "weights_only" not in str(e.value)
    assert not (tmp_path / "pwned").exists()  # weights_only=True: no code ran
    with pytest.raises(CheckpointFormatError, match="unknown checkpoint format '.ckpt'"):
        (tmp_path / "x.ckpt").write_bytes(b"x")
        load_state_dict(str(tmp_path / "x.ckpt"))


def test_thinjax_checkpoint_round_trip_and_atomic_refusal(tmp_path):
    src = release_path("resnet20_width8_cifar10_ema.pt")
    plan, variables = import_checkpoint(src)
    dst = tmp_path / "ck"
    export_model(str(dst), plan, variables, {"source": src})
    p2, v2, meta = load_model(str(dst))
    assert p2 == plan and meta["source"] == src
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(v2)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(str(dst), plan, variables)
    # a failing write leaves the old checkpoint and no temporary directory behind
    with pytest.raises(ValueError, match="Unsupported type"):  # orbax refuses the leaf
        export_model(str(dst), plan, {"params": {"x": object()}}, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["ck"]
    assert load_model(str(dst))[0] == plan
