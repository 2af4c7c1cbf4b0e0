"""The typed model configuration, the label conventions and the thread policy."""
import dataclasses

import numpy as np
import pytest
import torch

import napari_unet as nu
from napari_unet import conventions
from napari_unet.device import thread_policy
from napari_unet.model import Model, ModelConfig


def test_defaults_are_stated_once():
    config = ModelConfig()
    assert (config.depth, config.base_channels) == (conventions.DEFAULT_DEPTH, conventions.DEFAULT_BASE_CHANNELS)
    assert config.class_ids == (1, 2) and config.class_names == ("background", "class 2")
    assert config.num_classes == 2 and config.norm_low == (0.0,) and config.norm_high == (1.0,)
    instance = ModelConfig(mode="instance")
    assert instance.class_ids == conventions.INSTANCE_CLASS_IDS
    assert instance.class_names == conventions.INSTANCE_CLASS_NAMES


def test_config_is_frozen_and_replace_validates():
    config = ModelConfig(depth=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.depth = 3
    assert dataclasses.replace(config, trained_steps=5).trained_steps == 5
    with pytest.raises(ValueError, match="depth"):
        dataclasses.replace(config, depth=0)


@pytest.mark.parametrize("fields, message", [
    (dict(mode="panoptic"), "mode must be"),
    (dict(dims=4), "dims must be 2 or 3"),
    (dict(depth=2.5), "depth must be a whole number"),
    (dict(base_channels=-1), "base_channels"),
    (dict(in_channels=True), "in_channels"),
    (dict(class_ids=(1, 1)), "two different"),
    (dict(class_ids=(0, 2)), "cannot include 0"),
    (dict(class_ids=(1, 2), class_names=("a",)), "1 names for 2 classes"),
    (dict(in_channels=2, norm_low=(0.0,)), "norm_low must be 2"),
    (dict(norm_high=(float("nan"),)), "finite"),
    (dict(norm_low=(2.0,), norm_high=(1.0,)), "norm_high must be above norm_low"),
    (dict(norm_low=(1.0,), norm_high=(1.0,)), "norm_high must be above norm_low"),
    (dict(precision="int8"), "precision must be one of fp32, bf16, fp16"),
])
def test_invalid_configuration_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_dict_round_trip_and_foreign_keys():
    config = ModelConfig(dims=3, depth=2, in_channels=2, class_ids=(1, 3, 7), patch_size=(32, 64, 64))
    assert ModelConfig.from_dict(config.to_dict()) == config
    legacy = dict(config.to_dict(), num_classes=3, format_version=1)  # what 0.1 files hold
    assert ModelConfig.from_dict(legacy) == config
    with pytest.raises(ValueError, match="num_classes"):
        ModelConfig.from_dict(dict(config.to_dict(), num_classes=5))
    with pytest.raises(ValueError, match="unknown configuration key"):
        ModelConfig.from_dict(dict(config.to_dict(), activation="gelu"))


def test_untrained_model_matches_its_config():
    model = Model.untrained(dims=3, depth=2, base_channels=4, mode="instance", seed=0)
    x = torch.zeros(1, 1, 16, 16, 16)
    assert model.network(x).shape == (1, 3, 16, 16, 16) and not model.network.training
    with pytest.raises(TypeError, match="ModelConfig"):
        Model(model.network, model.config.to_dict())


def test_written_labels_background_is_zero():
    assert conventions.written_labels((1, 2, 5)).tolist() == [0, 2, 5]
    assert conventions.written_labels((1, 300)).dtype == np.uint16
    prob = np.zeros((3, 2, 2), np.float32)
    prob[2] = 1
    assert nu.segment.__module__  # the public API is importable
    from napari_unet.postprocess import semantic_labels

    assert semantic_labels(prob, (1, 2, 5)).tolist() == [[5, 5], [5, 5]]


def test_thread_policy_restores_threads_and_cudnn():
    before, cudnn = torch.get_num_threads(), torch.backends.cudnn.benchmark
    with thread_policy(threads=1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with thread_policy(spare_cores=1), thread_policy(spare_cores=1):
        assert torch.get_num_threads() <= max(1, before)
    assert torch.get_num_threads() == before and torch.backends.cudnn.benchmark == cudnn
