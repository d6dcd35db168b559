"""benchmarks/algorithm_steps.py's verdict: a step slower than its passes explain is named."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "algorithm_steps", Path(__file__).resolve().parent.parent / "benchmarks/algorithm_steps.py")
algorithm_steps = importlib.util.module_from_spec(spec)
spec.loader.exec_module(algorithm_steps)


def test_the_time_model_is_fitted_to_supervised_and_fixmatch_and_flags_an_outlier():
    # 1 ms fixed + 10 us per unit: supervised 16 fwd + 16 bwd = 48 units -> 1.48 ms; FixMatch
    # 144 + 144 = 432 units -> 5.32 ms. A 432-unit algorithm at 5.5 ms is within 25 %; at 7 ms not.
    results = {"supervised": {"seconds": 1.48e-3, "forward": 16, "backward": 16},
               "fixmatch": {"seconds": 5.32e-3, "forward": 144, "backward": 144},
               "close": {"seconds": 5.5e-3, "forward": 144, "backward": 144},
               "slow": {"seconds": 7.0e-3, "forward": 144, "backward": 144}}
    lines = algorithm_steps.report(results, slack=0.25)
    assert lines[0].startswith("model: 1.00 ms per step + 10.00 us per pass unit")
    verdicts = {line.split()[0]: line.rsplit("  ", 1)[1] for line in lines[2:]}
    assert verdicts == {"supervised": "ok", "fixmatch": "ok", "close": "ok",
                        "slow": "slower than its passes explain"}
