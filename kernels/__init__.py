"""Our Triton kernels, one module per kernel family; each checks itself against torch in tests/."""
