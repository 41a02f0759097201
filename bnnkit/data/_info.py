"""Facts about each supported dataset: classes, sizes and the normalisation constants the authors used."""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision's CIFAR10.classes order: the labels of the original binary release.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")

# CIFAR-100 fine labels in the release's (alphabetical) label order, as torchvision's CIFAR100.classes.
CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus butterfly camel can castle
caterpillar cattle chair chimpanzee clock cloud cockroach couch crab crocodile cup dinosaur dolphin elephant
flatfish forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man
maple_tree motorcycle mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree
plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper snail
snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television tiger tractor train trout
tulip turtle wardrobe whale willow_tree wolf woman worm
""".split())
assert len(CIFAR100_CLASSES) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)

# The standard ImageNet PCA of RGB pixel covariance (AlexNet paper), used by BiPer's Lighting.
IMAGENET_PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_PCA_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a dataset before reading any of it."""

    num_classes: int
    image_size: int  # side of the square images the loader delivers
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    classes: tuple[str, ...] | None = None  # fixed label order where the dataset defines one


DATASETS: dict[str, DatasetInfo] = {
    # CIFAR-10 is normalised with ImageNet's constants in the authors' code (spec Q27).
    "cifar10": DatasetInfo(10, 32, IMAGENET_MEAN, IMAGENET_STD, CIFAR10_CLASSES),
    "cifar100": DatasetInfo(100, 32, (0.507, 0.487, 0.441), (0.267, 0.256, 0.276), CIFAR100_CLASSES),
    "imagenet": DatasetInfo(1000, 224, IMAGENET_MEAN, IMAGENET_STD),
    "tinyimagenet": DatasetInfo(200, 224, (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}
