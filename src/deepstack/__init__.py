"""DeepStack (Meng et al., NeurIPS 2024) for any Hugging Face vision encoder and decoder LLM."""

from .method.sampling import sample_stacks
from .model.builder import build_model, load_pretrained
from .model.configuration import DeepStackConfig
from .model.modeling import DeepStackForConditionalGeneration
from .model.processing import DeepStackProcessor

__all__ = [
    "DeepStackConfig",
    "DeepStackForConditionalGeneration",
    "DeepStackProcessor",
    "build_model",
    "load_pretrained",
    "sample_stacks",
]
__version__ = "0.1.0"
