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
    # Kirchhoff: what flows in flows out (to the iterative solvers' 1e-13 of node voltages).
    total = solution.word_currents.sum(axis=1) + solution.bit_currents.sum(axis=1)
    np.testing.assert_allclose(total, 0.0, atol=1e-11 * np.abs(word_out).max())


@pytest.mark.parametrize(("r_word", "r_bit"), [(0.0, 2.0), (3.0, 0.0)])
def test_floating_lines_with_one_ideal_line_type_match_the_limit(r_word: float, r_bit: float):
    """A line type without resistance is one node per line (driven, or floating); the dense
    reference approaches it with 1e-6 Ohm segments (the old sparse solver agreed to 1e-15)."""
    rng = np.random.default_rng(9)
    conductances = rng.uniform(1e-3, 1e-2, (4, 5))
    words = rng.uniform(-0.3, 0.3, (4, 4))
    bits = rng.uniform(-0.1, 0.1, (4, 5))
    words[0, 1] = np.nan
    bits[1, [0, 3]] = np.nan
    words[2, 2:] = np.nan
    bits[2, 4] = np.nan
    solution = solve_lines(words, bits, conductances, r_word, r_bit)
    devices, word_out, bit_out = dense_reference(
        words, bits, conductances, max(r_word, 1e-6), max(r_bit, 1e-6)
    )
    # 1e-6 Ohm carrying ~10 mA: the reference is ~1e-8 V off the limit.
    np.testing.assert_allclose(solution.device_voltages, devices, rtol=0, atol=1e-7)
    np.testing.assert_allclose(solution.word_currents, word_out, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(solution.bit_currents, bit_out, rtol=1e-5, atol=1e-9)


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


@pytest.mark.parametrize("resistances", [(0.0, 0.0), (5.0, 5.0), (0.0, 5.0), (5.0, 0.0)])
def test_nonlinear_solution_satisfies_kirchhoff(resistances: tuple[float, float]) -> None:
    resistance = max(resistances)
    rng = np.random.default_rng(4)
    conductances = rng.uniform(2e-4, 2e-3, (4, 6))
    beta = rng.uniform(1.0, 3.0, (4, 6))
    current, slope = poole_frenkel_like(conductances, beta)
    words = np.array([[1.2, np.nan, np.nan, 0.6], [0.1, np.nan, 0.05, np.nan]])
    bits = np.array([[0.0, np.nan, 0.6, np.nan, np.nan, 0.6], [0.0] * 3 + [np.nan] * 3])
    solution = solve_lines(words, bits, None, *resistances, current=current, slope=slope)
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


# -- the fast solver: dense MNA with per-segment, driver and sense resistances -------------------


def dense_mna(
    voltages: np.ndarray,
    conductances: np.ndarray,
    r_word: np.ndarray,
    r_bit: np.ndarray,
    r_driver: np.ndarray,
    r_sense: np.ndarray,
) -> np.ndarray:
    """Output currents (batch, cols) by modified nodal analysis on the full graph: a word node
    and a bit node per cell, a source node per word line (an MNA voltage-source branch) and a
    sense node per bit line held at 0 V (also a branch), every resistor stamped explicitly."""
    rows, cols = conductances.shape
    cells = rows * cols
    n_nodes = 2 * cells + rows  # word nodes, bit nodes, driver nodes; ground = -1
    size = n_nodes + rows + cols  # plus branch currents of the word sources and sense shorts
    matrix = np.zeros((size, size))

    def stamp(p: int, q: int, g: float) -> None:
        for a, b, s in ((p, p, g), (q, q, g), (p, q, -g), (q, p, -g)):
            if a >= 0 and b >= 0:
                matrix[a, b] += s

    sense_node = []
    for i in range(rows):
        for j in range(cols):
            stamp(i * cols + j, cells + i * cols + j, conductances[i, j])
            left = 2 * cells + i if j == 0 else i * cols + j - 1
            resistance = r_word[i, j] + (r_driver[i] if j == 0 else 0.0)
            stamp(left, i * cols + j, 1.0 / resistance)
            if i + 1 < rows:
                stamp(cells + i * cols + j, cells + (i + 1) * cols + j, 1.0 / r_bit[i, j])
    for j in range(cols):
        # Bottom segment plus sense resistance to ground.
        stamp(cells + (rows - 1) * cols + j, -1, 1.0 / (r_bit[rows - 1, j] + r_sense[j]))
        sense_node.append(cells + (rows - 1) * cols + j)
    for i in range(rows):  # voltage source: driver node = V_i
        k = n_nodes + i
        matrix[2 * cells + i, k] = matrix[k, 2 * cells + i] = 1.0
    for j in range(cols):  # unused branch rows for the sense inputs: identity (kept square)
        matrix[n_nodes + rows + j, n_nodes + rows + j] = 1.0
    outputs = []
    for v in voltages:
        rhs = np.zeros(size)
        rhs[n_nodes : n_nodes + rows] = v
        x = np.linalg.solve(matrix, rhs)
        outputs.append([x[sense_node[j]] / (r_bit[rows - 1, j] + r_sense[j]) for j in range(cols)])
    return np.array(outputs)


@pytest.mark.parametrize("shape", [(5, 4), (1, 7), (6, 1), (1, 1), (3, 8)])
def test_fast_solver_matches_dense_mna_with_per_segment_driver_and_sense(
    shape: tuple[int, int],
) -> None:
    rng = np.random.default_rng(10 + shape[0] * 7 + shape[1])
    rows, cols = shape
    g = rng.uniform(1e-6, 5e-3, shape)
    r_word = rng.uniform(0.2, 3.0, shape)
    r_bit = rng.uniform(0.2, 3.0, shape)
    r_driver = rng.uniform(0.0, 50.0, rows)
    r_sense = rng.uniform(0.0, 20.0, cols)
    voltages = rng.uniform(-0.5, 0.5, (6, rows))
    out = solve_crossbar(voltages, g, r_word, r_bit, r_driver=r_driver, r_sense=r_sense)
    reference = dense_mna(voltages, g, r_word, r_bit, r_driver, r_sense)
    np.testing.assert_allclose(out, reference, rtol=1e-9, atol=1e-12 * np.abs(reference).max())


@pytest.mark.parametrize(("g_low", "g_high"), [(1e-12, 1e-10), (1e-2, 1e2), (1e-9, 1e1)])
def test_fast_solver_with_extreme_conductances(g_low: float, g_high: float) -> None:
    rng = np.random.default_rng(3)
    g = np.exp(rng.uniform(np.log(g_low), np.log(g_high), (6, 5)))
    voltages = rng.uniform(0.0, 0.4, (4, 6))
    rw, rb = np.full((6, 5), 0.35), np.full((6, 5), 0.32)
    out = solve_crossbar(voltages, g, 0.35, 0.32)
    reference = dense_mna(voltages, g, rw, rb, np.zeros(6), np.zeros(5))
    np.testing.assert_allclose(out, reference, rtol=1e-9)


def test_ideal_lines_are_exactly_v_at_g_and_the_full_solution_is_consistent() -> None:
    from simulation.circuit import CrossbarSolution

    rng = np.random.default_rng(8)
    g = rng.uniform(1e-6, 1e-3, (7, 5))
    voltages = rng.uniform(-0.3, 0.3, (9, 7))
    assert np.array_equal(solve_crossbar(voltages, g, 0.0, 0.0), voltages @ g)
    assert np.array_equal(solve_crossbar(voltages, g, np.zeros((7, 5)), 0.0), voltages @ g)
    full = solve_crossbar(voltages, g, 1.5, 2.0, full=True)
    assert isinstance(full, CrossbarSolution)
    flows = full.device_currents
    np.testing.assert_allclose(flows, g * (full.word_voltages - full.bit_voltages), rtol=1e-12)
    # Every device current reaches ground: outputs are the column sums.
    np.testing.assert_allclose(full.output_currents, flows.sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(full.bit_voltages[:, -1] / 2.0, full.output_currents, rtol=1e-12)


@pytest.mark.parametrize(
    ("r_word", "r_bit", "r_driver", "r_sense"),
    [(0.0, 2.0, 0.0, 0.0), (2.0, 0.0, 0.0, 0.0), (0.0, 0.0, 30.0, 0.0), (0.0, 0.0, 0.0, 20.0),
     (0.0, 3.0, 25.0, 0.0), (1.0, 0.0, 0.0, 15.0), (0.0, 0.0, 40.0, 10.0)],
)  # fmt: skip
def test_ideal_line_types_match_the_limit_of_tiny_segments(
    r_word: float, r_bit: float, r_driver: float, r_sense: float
) -> None:
    rng = np.random.default_rng(6)
    g = rng.uniform(1e-4, 2e-3, (4, 6))
    voltages = rng.uniform(-0.3, 0.3, (3, 4))
    kwargs = {"r_driver": r_driver, "r_sense": r_sense}
    exact = solve_crossbar(voltages, g, r_word, r_bit, **kwargs)
    # 1 uOhm segments: their own effect is ~1e-8 relative, and rounding stays far below.
    tiny = solve_crossbar(voltages, g, r_word or 1e-6, r_bit or 1e-6, **kwargs)
    np.testing.assert_allclose(exact, tiny, rtol=1e-6)


def test_factorisation_is_reused_across_calls() -> None:
    from simulation.circuit import FACTOR_CACHE

    FACTOR_CACHE.clear()
    rng = np.random.default_rng(1)
    g = rng.uniform(1e-6, 1e-3, (8, 6))
    first = solve_crossbar(rng.uniform(0, 0.3, (5, 8)), g, 1.0, 1.0)
    assert len(FACTOR_CACHE._entries) == 1
    second_v = rng.uniform(0, 0.3, (3, 8))
    second = solve_crossbar(second_v, g, 1.0, 1.0)
    assert len(FACTOR_CACHE._entries) == 1  # the same factorisation served both calls
    assert first.shape == (5, 6)
    np.testing.assert_allclose(
        second, solve_crossbar(second_v, g, 1.0, 1.0, cache=False), rtol=1e-13
    )
    solve_crossbar(second_v, g * 1.01, 1.0, 1.0)
    assert len(FACTOR_CACHE._entries) == 2


def _badcrossbar():
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import badcrossbar as module
    except ImportError:
        pytest.skip("badcrossbar (test-time oracle) is not installed")
    import logging

    logging.getLogger("badcrossbar").setLevel(logging.WARNING)
    logging.disable(logging.INFO)
    return module


@pytest.mark.parametrize("shape", [(6, 5), (1, 4), (4, 1), (16, 12)])
def test_fast_solver_matches_badcrossbar(shape: tuple[int, int]) -> None:
    module = _badcrossbar()
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    g = rng.uniform(5e-7, 3.5e-3, shape)
    voltages = rng.uniform(0.0, 0.5, (4, shape[0]))
    solution = module.compute(
        voltages.T, 1.0 / g, r_i_word_line=0.35, r_i_bit_line=0.32,
        node_voltages=False, all_currents=False,
    )  # fmt: skip
    reference = np.asarray(solution.currents.output).reshape(4, shape[1])
    np.testing.assert_allclose(solve_crossbar(voltages, g, 0.35, 0.32), reference, rtol=1e-9)


# -- gradients by the adjoint method, and Newton for nonlinear devices ---------------------------


@pytest.mark.parametrize(
    ("r_word", "r_bit", "r_driver", "r_sense"),
    [(0.7, 0.5, 0.0, 0.0), (0.0, 0.9, 0.0, 0.0), (0.8, 0.0, 0.0, 0.0), (0.0, 0.0, 20.0, 10.0),
     (0.6, 0.4, 5.0, 3.0)],
)  # fmt: skip
def test_linear_gradients_pass_gradcheck(
    r_word: float, r_bit: float, r_driver: float, r_sense: float
) -> None:
    import torch

    from simulation.circuit import CrossbarLines, crossbar_currents

    torch.manual_seed(0)
    lines = CrossbarLines.build((4, 3), r_word, r_bit, r_driver, r_sense)
    voltages = torch.rand(2, 2, 4, dtype=torch.float64, requires_grad=True)  # 2 arrays
    g = (torch.rand(2, 4, 3, dtype=torch.float64) * 0.05 + 0.01).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda v, c: crossbar_currents(v, c, lines)[0], (voltages, g), eps=1e-7, atol=1e-8
    )


def _pf_torch(beta: float):
    import torch

    def current(volts, g):
        return volts * g * torch.exp(beta * volts.abs().clamp_min(1e-300).sqrt())

    return current


def test_nonlinear_gradients_pass_gradcheck() -> None:
    import torch

    from simulation.circuit import CrossbarLines, crossbar_currents

    torch.manual_seed(1)
    current = _pf_torch(2.0)
    for r in ((0.7, 0.5), (0.0, 0.9), (0.8, 0.0)):
        lines = CrossbarLines.build((3, 4), *r)
        voltages = (torch.rand(3, 3, dtype=torch.float64) * 0.4 + 0.05).requires_grad_(True)
        g = (torch.rand(3, 4, dtype=torch.float64) * 0.05 + 0.01).requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda v, c, lines=lines: crossbar_currents(v, c, lines, current)[0],
            (voltages, g), eps=1e-7, atol=1e-8,
        )  # fmt: skip


def dense_nonlinear(voltages, beta, g, r_word, r_bit):
    """Full Newton on the dense 2 R C nodal system of one example (np.linalg.solve per step)."""
    rows, cols = g.shape
    n = rows * cols
    outputs = []
    for v in voltages:
        x = np.zeros(2 * n)
        for _ in range(100):
            u, b = x[:n].reshape(rows, cols), x[n:].reshape(rows, cols)
            d = u - b
            root = np.sqrt(np.abs(d))
            flow = d * g * np.exp(beta * root)
            slope = g * np.exp(beta * root) * (1 + 0.5 * beta * root)
            jac = np.zeros((2 * n, 2 * n))
            res = np.zeros(2 * n)
            for i in range(rows):
                for j in range(cols):
                    p, q = i * cols + j, n + i * cols + j
                    res[p] += flow[i, j]
                    res[q] -= flow[i, j]
                    for a, c, s in ((p, p, 1), (q, q, 1), (p, q, -1), (q, p, -1)):
                        jac[a, c] += s * slope[i, j]
                    left = v[i] if j == 0 else x[p - 1]
                    res[p] += (x[p] - left) / r_word
                    jac[p, p] += 1 / r_word
                    if j > 0:
                        jac[p, p - 1] -= 1 / r_word
                    if j + 1 < cols:
                        res[p] += (x[p] - x[p + 1]) / r_word
                        jac[p, p] += 1 / r_word
                        jac[p, p + 1] -= 1 / r_word
                    below = x[q + cols] if i + 1 < rows else 0.0
                    res[q] += (x[q] - below) / r_bit
                    jac[q, q] += 1 / r_bit
                    if i + 1 < rows:
                        jac[q, q + cols] -= 1 / r_bit
                    if i > 0:
                        res[q] += (x[q] - x[q - cols]) / r_bit
                        jac[q, q] += 1 / r_bit
                        jac[q, q - cols] -= 1 / r_bit
            step = np.linalg.solve(jac, -res)
            x += step
            if np.max(np.abs(step)) < 1e-15:
                break
        outputs.append(x[n + (rows - 1) * cols :] / r_bit)
    return np.array(outputs)


def test_newton_matches_a_dense_nonlinear_solve() -> None:
    rng = np.random.default_rng(12)
    g = rng.uniform(1e-4, 3e-3, (5, 4))
    beta = 3.0
    voltages = rng.uniform(0.05, 0.5, (3, 5))

    def current(v):
        return v * g * np.exp(beta * np.sqrt(np.abs(v)))

    def slope(v):
        root = np.sqrt(np.abs(v))
        return g * np.exp(beta * root) * (1 + 0.5 * beta * root)

    solution = solve_crossbar(voltages, g, 2.0, 1.5, current=current, slope=slope, full=True)
    reference = dense_nonlinear(voltages, beta, g, 2.0, 1.5)
    np.testing.assert_allclose(solution.output_currents, reference, rtol=1e-9)
    assert 1 <= solution.iterations < 40
    # Linear callables reproduce the linear solve.
    linear = solve_crossbar(
        voltages, g, 2.0, 1.5, current=lambda v: g * v, slope=lambda v: np.broadcast_to(g, v.shape)
    )
    np.testing.assert_allclose(linear, solve_crossbar(voltages, g, 2.0, 1.5), rtol=1e-11)
