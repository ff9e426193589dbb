"""Huge-page scratch arrays (`simulation.buffers.empty`) behave like numpy.empty."""

import mmap

import numpy as np
import pytest

from simulation import buffers


@pytest.mark.parametrize("shape", [(3, 4), (64, 1, 64, 160)])  # below and above the threshold
def test_empty_gives_a_writable_contiguous_array_of_the_shape(shape: tuple[int, ...]) -> None:
    array = buffers.empty(shape)
    assert array.shape == shape and array.dtype == np.float64
    assert array.flags.c_contiguous and array.flags.writeable
    values = np.arange(array.size, dtype=float).reshape(shape)
    array[...] = values
    np.testing.assert_array_equal(array, values)
    view = array[1:]
    del array
    np.testing.assert_array_equal(view, values[1:])  # the mapping lives as long as a view


@pytest.mark.skipif(buffers._HUGE_PAGES is None, reason="no madvise(MADV_HUGEPAGE) here")
def test_large_arrays_get_their_own_mapping_and_small_ones_do_not() -> None:
    def owner(array: np.ndarray) -> object:
        while isinstance(array, np.ndarray) and array.base is not None:
            array = array.base
        return array.obj if isinstance(array, memoryview) else array

    assert isinstance(owner(buffers.empty((buffers.HUGE_PAGE_MIN_BYTES // 8,))), mmap.mmap)
    small = buffers.empty((10,), np.float32)
    assert small.dtype == np.float32 and isinstance(owner(small), np.ndarray)
