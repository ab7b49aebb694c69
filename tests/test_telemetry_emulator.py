"""The emulator backend: its modelled power lands in the run's telemetry, labelled as modelled."""

import sys

import pytest

from analysis.energy import energy_table
from analysis.energy_text import energy_sentence
from core.hardware.catalog import get_gpu
from core.plan import parse_plan
from deploy import launcher
from deploy.launcher import ServerCommand
from loadtest import telemetry as tm
from loadtest.runner import Sweep, new_run_dir

PLAN = """
name: emu-energy
backend: emulator
variants: [{{name: fp16}}, {{name: awq}}]
scenario: {{prompt_tokens: 64, output_tokens: 64}}
sweep: {{concurrency: [1, 32], warmup_s: 0.3, duration_s: 1.5, drain_s: 10}}
telemetry: {{interval_s: 0.25}}
output_dir: "{out}"
"""


@pytest.fixture
def emulators(tmp_path):
    """fp16 and AWQ emulators on loopback; stopped by PID whatever happens."""
    started = []
    try:
        for name in ("fp16", "awq"):
            port = launcher.free_port()
            cmd = ServerCommand(name, [sys.executable, "-m", "deploy.emulator", "--port", str(port),
                                       "--weights", name, "--served-model-name", name,
                                       "--log-level", "warning"], port=port, startup_timeout_s=60)
            started.append(launcher.start(cmd, tmp_path / f"emu-{name}.log"))
        yield started
    finally:
        for srv in started:
            launcher.stop(srv)
            assert not srv.alive()


def test_emulator_run_records_modelled_energy(emulators, tmp_path):
    plan = parse_plan(PLAN.format(out=tmp_path), "t.yaml")
    run = new_run_dir(plan)
    # the servers are already up: hand the sweep commands with nothing to start
    cmds = [ServerCommand(s.command.variant, [], port=s.command.port) for s in emulators]
    Sweep(plan, run, commands=cmds).execute()

    man = run.read_manifest()
    assert man["status"] == "complete"
    assert {v["source"] for v in man["telemetry"]["variants"].values()} == {"modelled"}
    assert "GPU power is the emulator's model, not a measurement" in man["warnings"]

    df = tm.read_telemetry(run)
    assert set(df.source) == {"modelled"}
    assert {tm.POWER, tm.ENERGY} <= set(df.metric)

    table = energy_table(run.path)
    assert len(table) == 4 and (table.energy_method == "counter").all() and table.comparable.all()
    h100 = get_gpu("h100-sxm")
    assert ((table.mean_power_w >= h100.idle_w * 0.95) & (table.mean_power_w <= h100.tdp_w)).all()
    # 32 users keep the GPU busier than one: more watts, and many more tokens per joule
    for variant, g in table.groupby("variant"):
        lo, hi = g.set_index("level").loc[1], g.set_index("level").loc[32]
        assert hi.mean_power_w > lo.mean_power_w
        assert hi.tokens_per_joule > 5 * lo.tokens_per_joule
    sentence = energy_sentence(table, "awq", "fp16")
    assert sentence.startswith("awq at concurrency 32 gives ")
    assert sentence.endswith("modelled power, not measured)")

    # with the analysis' step table, the tokens are exactly the report's throughput
    import pandas as pd

    from analysis import analyze

    analyze(run.path)
    steps = pd.read_parquet(run.path / "steps.parquet")
    same = energy_table(run.path, steps).merge(steps[["variant", "step", "output_tokens_per_s"]], on=["variant", "step"])
    assert len(same) == 4
    assert same.tokens_per_s.tolist() == pytest.approx(same.output_tokens_per_s.tolist())
    assert same.tokens_per_s.tolist() == pytest.approx(table.sort_values(["variant", "step"]).tokens_per_s.tolist(),
                                                       rel=0.02)
