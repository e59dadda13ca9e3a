"""The paper's AlexNet: model, training, evaluation and checkpoints. Commands: python -m alexnet.<verb>."""
