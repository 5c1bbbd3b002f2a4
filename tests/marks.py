"""Skip marks shared by the test files, and the switch the AVX2-kernel rerun of the int8 tests sets (test_inference.py):
pytest's, kept out of standins.py, which the benchmarks import without pytest installed."""

import pytest

import inference

needs_int8_engine = pytest.mark.skipif(inference.int8_sums() is None, reason=inference.NO_INT8_ENGINE)
# fbgemm and oneDNN, whose int8 serves by its record or self-check alone (BENCHMARKS.md has their speed); QNNPACK's
# serves only where it also pays at start-up, both sides simulated in test_inference.py
needs_x86_int8 = pytest.mark.skipif(
    "fbgemm" not in inference.quantized_engines(),
    reason="fbgemm's kernels cannot run here (an ARM build of torch, or a CPU without AVX2)",
)

# Set for the rerun, whose tests need a trained head but not the outlier score's photos: conftest trains a small one
SMALL_HEAD = "FOODVISION_TESTS_SMALL_HEAD"
