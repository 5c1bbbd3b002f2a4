"""Skip marks shared by the test files, and the switch the AVX2-kernel rerun of the int8 tests sets (test_inference.py):
pytest's, kept out of standins.py, which the benchmarks import without pytest installed."""

import pytest

import inference

NO_INT8_ENGINE = "torch has no int8 kernels (fbgemm, oneDNN) for this CPU"
needs_int8_engine = pytest.mark.skipif(inference.int8_sums() is None, reason=NO_INT8_ENGINE)

# Set for the rerun, whose tests need a trained head but not the outlier score's photos: conftest trains a small one
SMALL_HEAD = "FOODVISION_TESTS_SMALL_HEAD"
