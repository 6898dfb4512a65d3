"""mfu-harness: measure how much of a GPU's arithmetic (MFU) and memory bandwidth (MBU) kernels use.

`harness.load_run(path)` and `harness.load_runs(paths)` read finished runs as pandas DataFrames
(harness/store/frames.py); they are imported on first use, so `import harness` stays light.
"""

__version__ = "0.1.0"
__all__ = ["load_run", "load_runs"]


def __getattr__(name: str):
    if name in __all__:
        from harness.store import frames

        return getattr(frames, name)
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
