"""benchmarks/reference_text.py against semilearn 0.3.2's own collator and ClassificationBert
(loaded by path from its environment; skipped where it is not installed)."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("reference_text", ROOT / "benchmarks/reference_text.py")
reference = importlib.util.module_from_spec(spec)
sys.modules["reference_text"] = reference
spec.loader.exec_module(reference)

pytestmark = pytest.mark.skipif(not (reference.DEFAULT / "nets/bert/bert.py").exists(),
                                reason=f"semilearn 0.3.2 is not installed at {reference.DEFAULT}")


def test_text_batches_features_logits_and_layers_are_semilearns_to_the_bit(capsys):
    assert reference.main([]) == 0
    assert "exact" in capsys.readouterr().out


def test_view_positions_pooling_is_semilearns_within_float_rounding(capsys):
    assert reference.main(["--pooling", "view_positions"]) == 0


def test_another_pooling_is_found_to_differ(capsys):
    assert reference.main(["--pooling", "attended"]) == 1
    assert "DIFFERS: features differ" in capsys.readouterr().out


def test_vat_on_text_is_semilearns_vat_embed_step_and_another_eps_is_found(capsys):
    assert reference.main([]) == 0
    assert "VAT on text (vat_embed), one step: largest difference" in capsys.readouterr().out
    assert reference.main(["--vat-eps", "5.0"]) == 1
    assert "DIFFERS: VAT" in capsys.readouterr().out
