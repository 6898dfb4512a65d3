"""`mfu compare`: backends side by side within a run, and runs against a reference run.

One job per module:
    command.py       the `mfu compare` command: its arguments, loading the runs, the exit code
    within_run.py    one run: backends side by side with speedups over the baseline (single)
    between_runs.py  several runs: each matched to the first by case_id, with verdicts on the same
                     device and TFLOPS/MFU ratios across devices (several)
    comparison.py    what a comparison holds (Comparison) and the grouping both kinds share
    rendering.py     its tables and its output as console, md, csv or json (render)

`mfu history` and `mfu report` use the names importable from here.
"""

from harness.present.compare.between_runs import several
from harness.present.compare.command import FORMATS, add_command, fraction
from harness.present.compare.comparison import Comparison
from harness.present.compare.rendering import render
from harness.present.compare.within_run import single

__all__ = ["FORMATS", "Comparison", "add_command", "fraction", "render", "several", "single"]
