"""Fashion-MNIST: ResNet18 versus a small CNN, class by class.

The package, one module per concern (stages/*.py call them; none imports a stage):
- params: params.yaml, validated            - data: raw files, checks, split, tensors
- models: the two networks                  - cpu_speedups: ResNet18's fast CPU training path
- training: the loop, resume state          - evaluation: test metrics, predictions file
- uncertainty: paired bootstrap, McNemar    - comparison: the verdict, rows for plots
- study: a seed study's statistics          - study_runs: a seed study's runs, as DVC experiments
- plots: matplotlib figures                 - tracking: MLflow connection and run life cycle
- records: what each stage logs to MLflow   - process: signals, locks, cores
- files, errors: atomic writes, one-line errors
The constants below are shared by all of them (and cost no import of torch).
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
MODEL_NAMES = ("resnet", "cnn")
MODEL_TITLES = {"resnet": "ResNet18", "cnn": "Small CNN"}
PER_CLASS_METRICS = ("precision", "recall", "f1")
PREDICTIONS_FILE = "data/predictions/test.csv"  # the evaluate stage's output, compare's and a study's input
