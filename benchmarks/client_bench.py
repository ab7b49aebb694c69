"""Run the client benchmark with the published settings and keep its JSON (see docs/client-benchmark.md).

    python benchmarks/client_bench.py [out.json] [extra `ridgeline bench client` options]

Same as `ridgeline bench client --json out.json ...`, for hosts where the command line is not installed.
"""

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from loadtest.cli_bench import bench_app  # noqa: E402

if __name__ == "__main__":
    out = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else "client-bench.json"
    extra = [a for a in sys.argv[1:] if a != out]
    bench_app(["client", "--json", out, *extra])
