"""Running experiments: the plan, the sweep, the metrics scraper and exporter, the results, the CLI."""
