"""Running experiments: the CLI, the sweep and its probes (scraper, GPU sampler, exporter), drivers, resume."""
