"""Presenting runs: the table renderer, summaries, comparisons, history, reports and charts, claims, and exports to other tools."""
