"""Put this folder on PYTHONPATH to run every Python process of a test run (pytest, the notebook kernels, the
subprocesses) with oneDNN's convolutions off, PyTorch's own convolution summing in another order: a CPU-portability
check (README, "Tests"): ``PYTHONPATH=tests/variants/onednn_off .venv/bin/python -m pytest``."""
try:
    import torch
except ImportError:       # a process of the run that has no torch (pip, a tool): nothing to change
    pass
else:
    torch.backends.mkldnn.enabled = False
