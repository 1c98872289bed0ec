"""Models, each registered by name; importing this package registers all of them."""

from brisk.models import cifar_resnet, coviar, i3d, imagenet_resnet, mfnet3d, small_cnn  # noqa: F401  (registration)
from brisk.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
