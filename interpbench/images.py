"""Image tensors as every part of the harness passes them: decoded uint8, or float in ``[0, 1]``."""
import torch


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, 3, H, W]`` to float32 in ``[0, 1]``."""
    return images.float().div_(255.0)
