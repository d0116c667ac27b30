"""The model registry: every model runs, the width multiplier matters, normalization sits inside."""

from __future__ import annotations

import pytest
import torch

from regcollide.models import Normalize, create_model, default_geometry, list_models


@pytest.mark.parametrize("name", list_models())
def test_every_registry_model_runs_a_forward_pass(name):
    geometry = default_geometry(name)
    torch.manual_seed(0)
    model = create_model(name).eval()
    x = torch.rand(2, geometry["in_chans"], geometry["img_size"], geometry["img_size"])
    logits = model(x)
    assert logits.shape == (2, geometry["num_classes"])
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("name", list_models())
def test_width_multiplier_changes_capacity(name):
    small = sum(p.numel() for p in create_model(name, width=0.5).parameters())
    large = sum(p.numel() for p in create_model(name, width=2.0).parameters())
    assert small < large


def test_mlp_is_li_et_al_architecture():
    linears = [m for m in create_model("mlp").modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 256), (256, 256), (256, 10)]


def test_vit_tiny_has_a_patchify_stem_and_normalize_first():
    model = create_model("vit-tiny")
    assert isinstance(model.normalize, Normalize)
    stem = model.net.patch_embed.proj
    assert stem.kernel_size == stem.stride and stem.padding == (0, 0)
    assert 28 % stem.kernel_size[0] == 0


def test_normalize_is_per_channel_affine():
    norm = Normalize((0.5, 0.25), (0.5, 2.0))
    x = torch.rand(3, 2, 4, 4)
    expected = torch.stack([(x[:, 0] - 0.5) / 0.5, (x[:, 1] - 0.25) / 2.0], dim=1)
    assert torch.allclose(norm(x), expected)


def test_external_models_random_init_with_normalize():
    model = create_model("timm:resnet18", num_classes=7)
    assert isinstance(model.normalize, Normalize)
    assert model(torch.rand(1, 3, 64, 64)).shape == (1, 7)
    tv = create_model("tv:resnet18", num_classes=5).eval()
    assert tv(torch.rand(1, 3, 64, 64)).shape == (1, 5)


@pytest.mark.parametrize("name,match", [("mlpp", "Did you mean 'mlp'"), ("timm:resnet_nope", "unknown timm"),
                                        ("tv:resnet_nope", "unknown torchvision")])
def test_unknown_models_get_a_helpful_error(name, match):
    with pytest.raises(ValueError, match=match):
        create_model(name)


def test_pretrained_file_loads_locally_and_rejects_other_architectures(tmp_path):
    from regcollide.io import CheckpointError, save_weights

    source = create_model("mlp")
    save_weights(source, tmp_path / "w.safetensors")
    clone = create_model("mlp", pretrained_file=str(tmp_path / "w.safetensors"))
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(source(x), clone(x))
    with pytest.raises(CheckpointError, match=r"shape mismatch: .*1\.weight \(256, 784\) vs model \(128, 784\)"):
        create_model("mlp", width=0.5, pretrained_file=str(tmp_path / "w.safetensors"))


def test_cli_random_init_is_seeded_and_leaves_the_global_rng_alone():
    from regcollide.models.resolve import resolve_model

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first, _ = resolve_model("mlp")
    after = torch.rand(1)
    second, _ = resolve_model("mlp")
    other, _ = resolve_model("mlp", init_seed=1)
    assert torch.equal(before, after)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert not torch.equal(first[1].weight, other[1].weight)
