"""Models, each registered by name; importing this package registers all of them."""

from brisk.models import cifar_resnet, imagenet_resnet, small_cnn  # noqa: F401  (registration)
from brisk.models import coviar, i3d, mfnet3d  # noqa: F401  (registration: video models)
from brisk.models.registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
