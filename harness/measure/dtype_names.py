"""The dtype vocabulary, without torch: the names a suite may use and the datasheet's peak columns.

harness/measure/dtypes.py builds each name's torch storage on these; gpus.yaml's `peaks_tflops` keys,
the ceilings sweep and every workload's `dtypes` draw from them. A new dtype starts here.
"""

from __future__ import annotations

NAMES = ("fp64", "fp32", "tf32", "bf16", "fp16", "fp8", "int8")  # what a suite's `dtype:` may say
# A datasheet peak may also be listed for a dtype no case runs yet (fp4 on Blackwell).
PEAK_KEYS = NAMES + ("fp4",)
