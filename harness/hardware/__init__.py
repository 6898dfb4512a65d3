"""The device: its facts (torch, NVML), the datasheet peak table (gpus.yaml), and the measured ceilings (the sweep that measures them and the store that keeps them)."""
