"""mfu-harness: measure how much of a GPU's arithmetic (MFU) and memory bandwidth (MBU) kernels use."""

__version__ = "0.1.0"
