"""The paper's experiments: one module per figure or table, results as CSV, plots as PNG."""
