"""Comparing runs: sweeps over config values (`sweep`, `sweep_runner`) and reports that
tabulate and plot finished runs (`report`, `report_plots`)."""
