"""From observations to reports: the report, findings, grouping, memory, moments, diffs."""
