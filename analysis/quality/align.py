"""Scored positions of a variant beside the baseline's, matched by (doc_id, position).

The two servers tokenized the same documents; a position is the index of a token in its
document's tokenization. Where both scored a document, they must have scored the same positions
and seen the same token there, otherwise their logprobs are about different things and any
difference is meaningless: that is an error naming the variant, document and position.
Documents only one side scored are left out of the pairing (counted, and said).
"""

from __future__ import annotations

import pandas as pd

from analysis.quality.rows import QualityError


def aligned_likelihood(variant: str, rows: pd.DataFrame, baseline: str, base: pd.DataFrame
                       ) -> tuple[pd.DataFrame, int]:
    """The joined positions (columns suffixed _v and _b), sorted; and how many documents were unpaired."""
    for name, df in ((variant, rows), (baseline, base)):
        dup = df.duplicated(["doc_id", "position"])
        if dup.any():
            r = df[dup].iloc[0]
            raise QualityError(f"{name}: likelihood rows repeat document {r.doc_id!r} position {int(r.position)}")
        bad = df.logprob.isna()
        if bad.any():
            r = df[bad].iloc[0]
            raise QualityError(f"{name}: likelihood row for document {r.doc_id!r} position {int(r.position)} "
                               f"has no logprob")
    docs = set(rows.doc_id) & set(base.doc_id)
    unpaired = len(set(rows.doc_id) ^ set(base.doc_id))
    v = rows[rows.doc_id.isin(docs)]
    b = base[base.doc_id.isin(docs)]
    m = v.merge(b, on=["doc_id", "position"], how="outer", suffixes=("_v", "_b"), indicator=True)
    only = m[m._merge != "both"]
    if len(only):
        r = only.sort_values(["doc_id", "position"]).iloc[0]
        who, other = (variant, baseline) if r._merge == "left_only" else (baseline, variant)
        raise QualityError(f"{variant}: document {r.doc_id!r} position {int(r.position)} was scored by {who} but not "
                           f"by {other}; the two did not tokenize the document alike")
    differ = m[m.token_v.astype(str) != m.token_b.astype(str)]
    if len(differ):
        r = differ.sort_values(["doc_id", "position"]).iloc[0]
        raise QualityError(f"{variant}: document {r.doc_id!r} position {int(r.position)} holds token {r.token_v!r} "
                           f"but the baseline {baseline} has {r.token_b!r} there; positions do not align")
    m = m.drop(columns="_merge").sort_values(["doc_id", "position"], kind="stable").reset_index(drop=True)
    return m, unpaired
