"""Model zoo. Importing this package registers every architecture."""
from rsjax.models.registry import ModelSpec, Normalize, get_model_spec, list_models, register_model
from rsjax.models import small  # noqa: F401  (registers fmnist_mlp, fmnist_cnn)
from rsjax.models import cifar_resnet  # noqa: F401  (registers cifar_resnet20/32/44/56)
from rsjax.models import resnet50  # noqa: F401  (registers resnet50)
from rsjax.models import mobilenet_v2  # noqa: F401  (registers mobilenet_v2)

DEFAULT_ARCH = {"fashion-mnist": "fmnist_mlp", "cifar10": "cifar_resnet20", "imagenet": "resnet50"}

__all__ = ["ModelSpec", "Normalize", "get_model_spec", "list_models", "register_model", "DEFAULT_ARCH"]
