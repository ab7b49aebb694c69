"""The bottom layer: what every part of ridgeline shares and nothing else.

The plan schema, the request and step records, the results-directory layout and its readers and
writers, secrets handling, the one base error, small shared utilities, and ``core.hardware`` (the
GPU/model catalogue, the roofline bound, the variant presets and the weight-format table).
Nothing here imports ``loadtest``, ``deploy``, ``scenarios`` or ``analysis``; they all import it.
"""
