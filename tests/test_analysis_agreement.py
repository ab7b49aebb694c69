"""Client/server agreement: the 5% flag, and 'coarse buckets' when the client's value is inside the server's bucket."""

import numpy as np
import pandas as pd
import pytest

from analysis.agreement import AGREEMENT_PCT, agreement_columns, disagreements


def _steps(rows):
    """rows: (client TTFT, server TTFT, server bucket lo, hi, client ITL, server ITL, bucket lo, hi)."""
    cols = ["ttft_p50_s", "server_ttft_p50_s", "server_ttft_p50_bucket_lo", "server_ttft_p50_bucket_hi",
            "itl_p50_s", "server_itl_p50_s", "server_itl_p50_bucket_lo", "server_itl_p50_bucket_hi"]
    df = pd.DataFrame(rows, columns=cols)
    df.insert(0, "step", range(len(df)))
    df.insert(0, "variant", "v")
    return agreement_columns(df)


def test_the_flag_is_at_five_percent():
    assert AGREEMENT_PCT == 5.0
    out = _steps([
        (0.1049, 0.1, 0.05, 0.075, 0.01, 0.01, 0.005, 0.006),  # +4.9%: agrees
        (0.1051, 0.1, 0.05, 0.075, 0.0094, 0.01, 0.005, 0.006),  # +5.1% and -6%: both flagged
    ])
    assert out.ttft_server_diff_pct.tolist() == pytest.approx([4.9, 5.1])
    assert out.ttft_flagged.tolist() == [False, True]
    assert out.itl_server_diff_pct.tolist() == pytest.approx([0.0, -6.0])
    assert out.itl_flagged.tolist() == [False, True]
    assert out.agreement.tolist() == ["", "TTFT disagrees; ITL disagrees"]


def test_inside_the_servers_bucket_is_coarse_buckets_not_a_disagreement():
    # vLLM's ITL buckets are 10 ms wide at the bottom: a client median of 4 ms and a server estimate of 5 ms
    # (the bucket's midpoint) differ by 20%, but the histogram cannot tell them apart
    out = _steps([(0.02, 0.02, 0.01, 0.025, 0.004, 0.005, 0.0, 0.01),
                  (0.02, 0.02, 0.01, 0.025, 0.012, 0.005, 0.0, 0.01)])
    assert out.itl_flagged.tolist() == [True, True]
    assert out.itl_within_bucket.tolist() == [True, False]
    assert out.agreement.tolist() == ["", "ITL disagrees"]
    lines = disagreements(out)
    assert lines == ["v step 1: client ITL median 12.0 ms vs server 5.0 ms (+140%)"]


def test_no_server_histogram_is_neither_flagged_nor_a_disagreement():
    out = _steps([(0.02, np.nan, np.nan, np.nan, 0.004, np.nan, np.nan, np.nan)])
    assert not out.ttft_flagged[0] and not out.itl_flagged[0] and not out.itl_within_bucket[0]
    assert out.agreement[0] == ""
    assert disagreements(out) == []


def test_the_report_says_coarse_buckets():
    from analysis.report_html import _agreement_word

    out = _steps([(0.02, 0.0201, 0.01, 0.025, 0.004, 0.005, 0.0, 0.01),
                  (0.024, 0.02, 0.01, 0.025, 0.012, 0.005, 0.0, 0.01),
                  (0.02, np.nan, np.nan, np.nan, 0.004, np.nan, np.nan, np.nan)])
    words = [_agreement_word(r) for r in out.itertuples(index=False)]
    assert words == ["TTFT agrees; ITL: coarse buckets", "TTFT: coarse buckets; ITL disagrees", "no server histogram"]
