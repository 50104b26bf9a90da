"""PyTorch side of the course: a Dataset of the course images and torchvision's MobileNetV2 with the
chosen weights. Imports torch and torchvision (never after TensorFlow in the same process)."""
from __future__ import annotations

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset

from course import data, weights

# torchvision's ImageNet normalisation: the input every torchvision MobileNetV2 (and ours) expects.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def preprocess(images):
    """uint8 images (N, H, W, 3) -> normalised float tensor (N, 3, H, W)."""
    x = torch.as_tensor(np.asarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return (x - MEAN) / STD


class ShapesDataset(Dataset):
    """One split of a course task as ``(image_tensor, label)`` pairs, preprocessed for MobileNetV2."""

    def __init__(self, task="target", split="train", per_class=None, seed=0):
        images, labels = data.load_task(task, split, per_class, seed)
        self.X = preprocess(images)
        self.y = torch.as_tensor(labels)
        self.classes = data.class_names(task)

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.X[i], self.y[i]


def image_folder(path):
    """A class-per-folder tree of images as ``torchvision.datasets.ImageFolder``, ready for MobileNetV2."""
    from torchvision import transforms
    transform = transforms.Compose([transforms.Resize((data.IMAGE_SIZE, data.IMAGE_SIZE)), transforms.ToTensor(),
                                    transforms.Normalize(MEAN.flatten().tolist(), STD.flatten().tolist())])
    return torchvision.datasets.ImageFolder(path, transform=transform)


def device():
    """The GPU when there is one, else the CPU: lesson code runs unchanged on either."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def mobilenet_v2_pretrained(verbose=True):
    """torchvision's ``mobilenet_v2`` with the weights the course setting chooses, printed for the student.

    ImageNet weights come through torchvision's own ``weights=`` argument; the course backbone is
    torchvision's architecture with our state dict loaded (its classifier has 10 source classes).
    """
    choice = weights.choose("torch")
    if verbose:
        print(choice)
    if choice.kind == "imagenet":
        return torchvision.models.mobilenet_v2(weights=torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V2)
    if choice.kind == "none":
        return torchvision.models.mobilenet_v2(weights=None)
    state = torch.load(choice.path, map_location="cpu", weights_only=True)
    model = torchvision.models.mobilenet_v2(weights=None, num_classes=state["classifier.1.weight"].shape[0])
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return model
