"""Crossbar circuit solver against an independent dense nodal solve and closed forms."""

import numpy as np
import pytest

from simulation.circuit import solve_crossbar, solve_lines


def dense_reference(
    words: np.ndarray, bits: np.ndarray, conductances: np.ndarray, r_word: float, r_bit: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every cell has its own word node and bit node; np.linalg.solve on the full system.

    Word line i: source -r_word- (i,0) -r_word- (i,1) ...; bit line j: (0,j) -r_bit- ... (R-1,j)
    -r_bit- terminal. NaN = floating (no terminal edge). Returns device voltages (n, R, C), word
    and bit terminal currents (into the array)."""
    rows, cols = conductances.shape
    size = 2 * rows * cols

    def w(i: int, j: int) -> int:
        return i * cols + j

    def b(i: int, j: int) -> int:
        return rows * cols + i * cols + j

    devices, word_out, bit_out = [], [], []
    for word, bit in zip(words, bits, strict=True):
        matrix, rhs = np.zeros((size, size)), np.zeros(size)

        def edge(p: int, q: int, g: float, matrix: np.ndarray = matrix) -> None:
            matrix[p, p] += g
            matrix[q, q] += g
            matrix[p, q] -= g
            matrix[q, p] -= g

        for i in range(rows):
            for j in range(cols):
                edge(w(i, j), b(i, j), conductances[i, j])
                if j + 1 < cols:
                    edge(w(i, j), w(i, j + 1), 1 / r_word)
                if i + 1 < rows:
                    edge(b(i, j), b(i + 1, j), 1 / r_bit)
        for i in range(rows):
            if not np.isnan(word[i]):
                matrix[w(i, 0), w(i, 0)] += 1 / r_word
                rhs[w(i, 0)] += word[i] / r_word
        for j in range(cols):
            if not np.isnan(bit[j]):
                matrix[b(rows - 1, j), b(rows - 1, j)] += 1 / r_bit
                rhs[b(rows - 1, j)] += bit[j] / r_bit
        x = np.linalg.solve(matrix, rhs)
        devices.append(x[: rows * cols].reshape(rows, cols) - x[rows * cols :].reshape(rows, cols))
        word_out.append(
            np.nan_to_num([(word[i] - x[w(i, 0)]) / r_word for i in range(rows)], nan=0.0)
        )
        bit_out.append(
            np.nan_to_num([(bit[j] - x[b(rows - 1, j)]) / r_bit for j in range(cols)], nan=0.0)
        )
    return np.array(devices), np.array(word_out), np.array(bit_out)


@pytest.mark.parametrize("shape", [(4, 3), (1, 6), (5, 1), (3, 3)])
def test_solve_crossbar_matches_dense_nodal_solve(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    conductances = rng.uniform(1e-4, 5e-3, shape)
    voltages = rng.uniform(-0.5, 0.5, (7, shape[0]))
    r_word, r_bit = 2.5, 1.5
    out = solve_crossbar(voltages, conductances, r_word, r_bit)
    _, _, bits = dense_reference(voltages, np.zeros((7, shape[1])), conductances, r_word, r_bit)
    np.testing.assert_allclose(out, -bits, rtol=1e-9)
    # Line resistance only loses current (all voltages of one sign): compare with V @ G.
    positive = np.abs(voltages)
    assert np.all(solve_crossbar(positive, conductances, r_word, r_bit) < positive @ conductances)


def test_zero_resistance_is_exactly_a_matrix_product_and_the_limit_is_continuous() -> None:
    rng = np.random.default_rng(0)
    conductances = rng.uniform(1e-6, 1e-5, (6, 4))
    voltages = rng.uniform(0, 0.3, (5, 6))
    np.testing.assert_array_equal(
        solve_crossbar(voltages, conductances, 0, 0), voltages @ conductances
    )
    np.testing.assert_allclose(
        solve_crossbar(voltages, conductances, 1e-6, 1e-6), voltages @ conductances, rtol=1e-9
    )
    # One line type ideal, the other resistive: the collapsed nodes agree with a tiny resistance.
    np.testing.assert_allclose(
        solve_crossbar(voltages, conductances, 0.0, 50.0),
        solve_crossbar(voltages, conductances, 1e-9, 50.0),
        rtol=1e-7,
    )
    # A (rows,) vector is one example.
    np.testing.assert_array_equal(
        solve_crossbar(voltages[0], conductances, 0, 0), voltages[0] @ conductances
    )


def test_floating_lines_with_line_resistance_match_dense_solve() -> None:
    rng = np.random.default_rng(5)
    conductances = rng.uniform(1e-3, 1e-2, (4, 5))
    words = rng.uniform(-0.3, 0.3, (6, 4))
    bits = rng.uniform(-0.1, 0.1, (6, 5))
    words[0, [1, 2]] = np.nan
    bits[0, 3] = np.nan
    words[1, :3] = np.nan
    bits[2, :] = np.nan
    bits[2, 0] = 0.0
    words[3, 1] = np.nan  # same pattern as row 4: shares one factorisation
    words[4, 1] = np.nan
    solution = solve_lines(words, bits, conductances, 3.0, 2.0)
    devices, word_out, bit_out = dense_reference(words, bits, conductances, 3.0, 2.0)
    np.testing.assert_allclose(solution.device_voltages, devices, rtol=1e-9, atol=1e-15)
    np.testing.assert_allclose(solution.word_currents, word_out, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(solution.bit_currents, bit_out, rtol=1e-9, atol=1e-18)
    # Kirchhoff: what flows in flows out.
    total = solution.word_currents.sum(axis=1) + solution.bit_currents.sum(axis=1)
    np.testing.assert_allclose(total, 0.0, atol=1e-15)


def test_classic_sneak_path_reads_high_with_floating_lines() -> None:
    # Cell (0, 0) is high-R; the other three are low-R. Read (0, 0): word 0 at V, bit 0 at 0 V,
    # word 1 and bit 1 floating. The sneak path (0,1) -> (1,1) -> (1,0) adds a series current.
    g_low, g_high = 1e-6, 1e-3
    conductances = np.array([[g_low, g_high], [g_high, g_high]])
    v = 0.2
    words, bits = np.array([[v, np.nan]]), np.array([[0.0, np.nan]])
    solution = solve_lines(words, bits, conductances)
    series = 1 / (3 / g_high)
    expected = v * (g_low + series)
    assert -solution.bit_currents[0, 0] == pytest.approx(expected, rel=1e-12)
    assert solution.word_currents[0, 0] == pytest.approx(expected, rel=1e-12)
    assert -solution.bit_currents[0, 0] / v > 100 * g_low  # reads far higher than the true cell
    assert solution.word_currents[0, 1] == 0 and solution.bit_currents[0, 1] == 0
    # Equal divider: floating bit 1 sits at 2V/3 and floating word 1 at V/3, so each sneak device
    # sees V/3, the middle one reverse-biased.
    np.testing.assert_allclose(
        solution.device_voltages[0], [[v, v / 3], [v / 3, -v / 3]], rtol=1e-12
    )
    # Grounding the unselected lines removes the sneak path.
    grounded = solve_lines(np.array([[v, 0.0]]), np.array([[0.0, 0.0]]), conductances)
    assert -grounded.bit_currents[0, 0] == pytest.approx(v * g_low, rel=1e-12)


def poole_frenkel_like(conductances: np.ndarray, beta: np.ndarray):
    def current(v: np.ndarray) -> np.ndarray:
        return v * conductances * np.exp(beta * np.sqrt(np.abs(v)))

    def slope(v: np.ndarray) -> np.ndarray:
        x = beta * np.sqrt(np.abs(v))
        return conductances * np.exp(x) * (1 + 0.5 * x)

    return current, slope


@pytest.mark.parametrize("resistance", [0.0, 20.0])
def test_newton_with_linear_callables_equals_the_linear_solve(resistance: float) -> None:
    rng = np.random.default_rng(2)
    conductances = rng.uniform(1e-4, 1e-3, (5, 4))
    words = rng.uniform(-0.5, 0.5, (4, 5))
    bits = np.zeros((4, 4))
    words[0, 2] = np.nan
    bits[1, 1:] = np.nan
    bits[2, 0] = np.nan
    linear = solve_lines(words, bits, conductances, resistance, resistance)
    newton = solve_lines(
        words,
        bits,
        None,
        resistance,
        resistance,
        current=lambda v: v * conductances,
        slope=lambda v: np.broadcast_to(conductances, v.shape),
    )
    np.testing.assert_allclose(newton.bit_currents, linear.bit_currents, rtol=1e-9, atol=1e-18)
    np.testing.assert_allclose(
        newton.device_voltages, linear.device_voltages, rtol=1e-9, atol=1e-15
    )


@pytest.mark.parametrize("resistance", [0.0, 5.0])
def test_nonlinear_solution_satisfies_kirchhoff(resistance: float) -> None:
    rng = np.random.default_rng(4)
    conductances = rng.uniform(2e-4, 2e-3, (4, 6))
    beta = rng.uniform(1.0, 3.0, (4, 6))
    current, slope = poole_frenkel_like(conductances, beta)
    words = np.array([[1.2, np.nan, np.nan, 0.6], [0.1, np.nan, 0.05, np.nan]])
    bits = np.array([[0.0, np.nan, 0.6, np.nan, np.nan, 0.6], [0.0] * 3 + [np.nan] * 3])
    solution = solve_lines(words, bits, None, resistance, resistance, current=current, slope=slope)
    assert 1 <= solution.iterations < 30
    flows = current(solution.device_voltages)
    for k in range(2):
        row_sums, col_sums = flows[k].sum(axis=1), flows[k].sum(axis=0)
        scale = np.abs(flows[k]).max()
        if resistance == 0:
            # Floating lines carry no net device current; driven ones match their terminals.
            np.testing.assert_allclose(row_sums[np.isnan(words[k])], 0, atol=1e-10 * scale)
            np.testing.assert_allclose(col_sums[np.isnan(bits[k])], 0, atol=1e-10 * scale)
        np.testing.assert_allclose(
            solution.word_currents[k], np.where(np.isnan(words[k]), 0, row_sums), rtol=1e-8,
            atol=1e-10 * scale,
        )  # fmt: skip
        np.testing.assert_allclose(
            solution.bit_currents[k], np.where(np.isnan(bits[k]), 0, -col_sums), rtol=1e-8,
            atol=1e-10 * scale,
        )  # fmt: skip
    # Nonlinearity: the sneak-free grounded read of one cell is exactly that cell's I(V).
    grounded = solve_lines(
        np.array([[0.3, 0, 0, 0]]), np.zeros((1, 6)), None, current=current, slope=slope
    )
    assert -grounded.bit_currents[0, 0] == pytest.approx(current(np.array(0.3))[0, 0], rel=1e-12)


def test_isolated_floating_lines_carry_nothing() -> None:
    conductances = np.array([[1e-3, 0.0], [0.0, 0.0]])
    solution = solve_lines(np.array([[0.1, np.nan]]), np.array([[0.0, np.nan]]), conductances)
    assert solution.bit_currents[0, 0] == pytest.approx(-1e-4, rel=1e-12)
    assert solution.word_currents[0, 1] == 0 and solution.bit_currents[0, 1] == 0
    # Everything floating: nothing flows.
    nothing = solve_lines(np.full((1, 2), np.nan), np.full((1, 2), np.nan), conductances, 1.0, 1.0)
    assert not nothing.word_currents.any() and not nothing.bit_currents.any()


def test_bad_input_is_named() -> None:
    conductances = np.ones((2, 3)) * 1e-3
    with pytest.raises(ValueError, match="voltages"):
        solve_crossbar(np.ones((4, 3)), conductances, 0, 0)
    with pytest.raises(ValueError, match="r_word"):
        solve_crossbar(np.ones((4, 2)), conductances, -1.0, 0)
    with pytest.raises(ValueError, match="conductances"):
        solve_lines(np.ones((1, 2)), np.ones((1, 3)), -conductances)
    with pytest.raises(ValueError, match="either conductances"):
        solve_lines(np.ones((1, 2)), np.ones((1, 3)))
