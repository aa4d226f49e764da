"""Fashion-MNIST: ResNet18 versus a small CNN, class by class."""

CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
MODEL_NAMES = ("resnet", "cnn")
