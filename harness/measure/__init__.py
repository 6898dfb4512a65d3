"""What a case is and how it runs: suites and cases, the supervised worker, timing, telemetry, metrics, statistics, the correctness rule, memory checks and plans."""
