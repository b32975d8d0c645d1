"""Shared by the bad-input tests: the command line run in this process, and what a clean error is."""
from dataclasses import dataclass

import pytest

from apot_utils.cli import main


@dataclass
class Run:
    """Exit status and the two output streams of one ``python -m apot_utils`` call."""
    status: int
    out: str
    err: str

    def assert_clean_error(self, *fragments: str) -> None:
        """Exit status 2, no traceback, an ``error:`` (or argparse) line, and every fragment in stderr."""
        assert self.status == 2, self.err
        assert "Traceback" not in self.err, self.err
        assert any(line.startswith(("error:", "python -m apot_utils")) for line in self.err.strip().splitlines()), self.err
        for fragment in fragments:
            assert fragment in self.err, (fragment, self.err)


@pytest.fixture
def cli(capsys):
    """``cli(*argv)``: run the command line in this process (argparse's exits included) and return a :class:`Run`."""
    def run(*argv) -> Run:
        capsys.readouterr()
        try:
            status = main([str(a) for a in argv])
        except SystemExit as stop:
            status = stop.code
        captured = capsys.readouterr()
        return Run(status, captured.out, captured.err)
    return run


@pytest.fixture(scope="session")
def first1000(ref):
    """The exact first 1,000 CIFAR-10 test images (the tiny training runs train and validate on them)."""
    return ref("cifar10/test_first1000_lossless.npz")


@pytest.fixture
def tiny_train(first1000):
    """``tiny_train(out, *extra)``: the argv of a 2-step 3-bit CIFAR-10 training run into ``out``."""
    def argv(out, *extra):
        return ["train", "--bit", "3", "--data", first1000, "--val-data", first1000, "--subset", "256",
                "--val-subset", "100", "--max-steps", "2", "--epochs", "1", "--out", out, "--no-progress", *extra]
    return argv
