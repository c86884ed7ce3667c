"""The FID Inception-v3 network (TensorFlow's 2015-12-05 graph, as ported by pytorch-fid), loaded from a local file.

FID scores are comparable with published ones only with this exact network: torchvision's Inception3 layout
with 1008 classes and no auxiliary head, average pools that ignore the zero padding (TensorFlow's behaviour,
pytorch-fid's FIDInceptionA/C/E_1) and a max pool in the branch_pool of the last block (FIDInceptionE_2).
Inputs in [0, 1] are resized to 299x299 (bilinear, align_corners=False) and mapped to [-1, 1]; the features
are the 2048-d output of the final average pool (pytorch-fid's ``InceptionV3([3])``).

Nothing is downloaded: give the path of ``pt_inception-2015-12-05-6726825d.pth`` (a plain state dict saved
with ``torch.save``; read with ``weights_only=True``) or of the same tensors as ``.safetensors``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffusionlab.io import CheckpointError, load_tensors

__all__ = [
    "FIDInceptionV3",
    "load_inception",
    "inception_input",
    "inception_state_dict",
    "FID_WEIGHTS_NAME",
    "INCEPTION_SIZE",
]

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SIZE = 299


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, TensorFlow's), ReLU."""

    def __init__(
        self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1, padding: int | tuple[int, int] = 0
    ):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_tf(x: Tensor) -> Tensor:
    """3x3 stride-1 average pool that, like TensorFlow's, does not count the zero padding."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block: 1x1, 5x5, double 3x3 and pooled branches (pytorch-fid's FIDInceptionA)."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (torchvision's InceptionB, Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (pytorch-fid's FIDInceptionC)."""

    def __init__(self, cin: int, channels_7x7: int) -> None:
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, self.branch7x7dbl_5(d), self.branch_pool(_avg_pool_tf(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8 (torchvision's InceptionD, Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks; ``pool='avg'`` is FIDInceptionE_1, ``'max'`` FIDInceptionE_2."""

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        # FIDInceptionE_2: TensorFlow's graph max-pools here (pytorch-fid keeps this quirk for comparable scores)
        pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max" else _avg_pool_tf(x)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 with the FID graph's blocks and parameter names; ``features`` gives the 2048-d pool features."""

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)  # the graph's 1008 ImageNet logits; unused for FID, present in the weights

    feature_dim = 2048

    def features(self, images: Tensor) -> Tensor:
        """Pool features (N, 2048) of RGB images (N, 3, H, W) in [0, 1] (resized to 299x299 here)."""
        x = inception_input(images)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c):
            x = block(x)
        for block in (self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return x.mean(dim=(2, 3))

    def forward(self, images: Tensor) -> Tensor:
        """The 1008 logits of the graph (for completeness; FID uses ``features``)."""
        return self.fc(self.features(images))


def inception_input(images: Tensor) -> Tensor:
    """RGB images (N, 3, H, W) in [0, 1] as the graph takes them: resized to 299x299 (bilinear, half-pixel
    centres, ``align_corners=False``, as pytorch-fid) and mapped to [-1, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"Inception takes RGB images (N, 3, H, W) in [0, 1], got shape {tuple(images.shape)}.")
    x = F.interpolate(images, size=(INCEPTION_SIZE, INCEPTION_SIZE), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


def _expected_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def inception_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a weights file: ``.safetensors``, or a torch-saved plain state dict (``weights_only=True``)."""
    path = Path(path)
    hint = f"expected the FID Inception weights ({FID_WEIGHTS_NAME} from pytorch-fid, or the same as .safetensors)"
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; {hint}.")
    if path.suffix == ".safetensors":
        return load_tensors(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure here means an unreadable file
        raise CheckpointError(
            f"{path} is not a readable torch weights file ({str(err).splitlines()[0]}); {hint}."
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a plain state dict of tensors; {hint}.")
    return dict(state)


def load_inception(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> FIDInceptionV3:
    """Build the FID Inception and load its weights; any missing, unexpected or mis-shaped tensor is one
    clear ``CheckpointError`` naming the file, the first such key and the expected shape."""
    state = {k: v for k, v in inception_state_dict(path).items() if not k.endswith("num_batches_tracked")}
    model = FIDInceptionV3()
    expected = _expected_shapes(model)
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not the FID Inception weights: {len(missing)} tensor(s) missing, the first is {missing[0]!r} "
            f"of shape {expected[missing[0]]}."
        )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise CheckpointError(
            f"{path} is not the FID Inception weights: it holds {len(unexpected)} unexpected tensor(s), the first is "
            f"{unexpected[0]!r}."
        )
    for key, shape in expected.items():
        if tuple(state[key].shape) != shape:
            raise CheckpointError(
                f"{path} does not fit the FID Inception: {key!r} has shape {tuple(state[key].shape)}, expected {shape}."
            )
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    return model.eval().requires_grad_(False).to(device)
