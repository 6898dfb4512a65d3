"""The run directory: its column registry and schema, the one writer (results) and the one reader (frames, runs), and the lock that keeps one run per directory."""
