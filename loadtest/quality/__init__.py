"""Quality measured through each variant's live server, beside its speed (docs/quality.md).

One collector per kind of measurement (likelihood, greedy, task, lm_eval), each a module with a
`Collector` subclass and a line in `registry.py`; `measure.py` runs those the plan asks for and
writes the raw rows into results/<run>/quality/<variant>/ for the analysis.
"""
