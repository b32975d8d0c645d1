"""Quantization-aware training (filled in by the training issue)."""


def add_train_arguments(parser):
    pass


def run_training(args):
    raise NotImplementedError
