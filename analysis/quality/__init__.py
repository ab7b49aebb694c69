"""Quality beside speed: what each variant costs in likelihood, distribution shift, greedy agreement
and task accuracy, against the baseline, from the raw rows under results/<run>/quality/.

rows.py reads and checks the rows; metrics/ holds one metric per file and their registry;
scorers/ the task scorers; intervals.py the intervals; section.py the summary.json section with
its flags and gates; verdict.py, table.py and chart.py what the reports show.
"""
