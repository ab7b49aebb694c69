"""What the traffic looks like: lengths, datasets, prompts, arrivals and the Locust users that send it."""
