"""Fashion-MNIST: ResNet18 (either stem) against a small CNN, class by class; the models are params.yaml's.

The package has one module per concern; stages/*.py call them, none imports a stage, and no module imports
one above it. README.md's "Where things live" is the map of every module (tests/test_readme.py checks that
it names each one). The constants below are shared by all of them (and cost no import of torch).
"""

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
NUM_CLASSES = len(CLASS_NAMES)
PER_CLASS_METRICS = ("precision", "recall", "f1")
PREDICTIONS_FILE = "data/predictions/test.csv"  # the evaluate stage's output, compare's and a study's input
