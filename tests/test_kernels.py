"""The fused CPU GRU/LSTM kernels (agents/kernels): parity with torch.nn.GRU/LSTM and with the stock step path,
gradients (gradcheck in float64), the single-step path, the kernel option and the fallback when the build fails."""

import os
import random
import warnings

import pytest
import torch

from agents import kernels
from agents.cores import make_core
from agents.kernels import fused

torch.set_num_threads(1)
RECURRENT = ["gru", "lstm"]

if os.environ.get(kernels.ENV_KERNEL) == "stock":  # explicitly opted out of building: nothing here can run
    pytest.skip(f"{kernels.ENV_KERNEL}=stock", allow_module_level=True)


@pytest.fixture
def fused_kernels():
    """Skip where the fused kernels cannot be built (no compiler or ninja), naming why; the tests of that case itself
    (``failing_build`` below) run everywhere."""
    if not kernels.available():
        pytest.skip("the fused kernels cannot be built on this machine: " + (kernels._error or "").splitlines()[0])


needs_fused = pytest.mark.usefixtures("fused_kernels")


def _pair(name, F, H, L, seed=0, dtype=torch.float32):
    """A fused core and a stock core with the same weights."""
    torch.manual_seed(seed)
    fast = make_core(name, F, H, L, kernel="fused").to(dtype)
    slow = make_core(name, F, H, L, kernel="stock").to(dtype)
    slow.load_state_dict(fast.state_dict())
    assert fast.kernel_in_use == "fused" and slow.kernel_in_use == "stock"
    return fast, slow


def _stepwise(core, x, state, starts):
    """The step-by-step reference: the core's stock step path (reset, then torch.gru_cell / lstm_cell)."""
    ys = []
    for t in range(x.shape[0]):
        state = core.reset(state, starts[t])
        y, state = core._step(x[t], state)
        ys.append(y)
    return torch.stack(ys), state


def _run(fn, core, x, state0, gy, gs):
    """Outputs, final state, and the gradients of <y, gy> + <state, gs> w.r.t. x, state0 and every parameter."""
    x = x.detach().clone().requires_grad_(True)
    state0 = state0.detach().clone().requires_grad_(True)
    core.zero_grad(set_to_none=True)
    y, s = fn(core, x, state0)
    ((y * gy).sum() + (s * gs).sum()).backward()
    grads = {"x": x.grad, "state0": state0.grad}
    grads.update({n: p.grad for n, p in core.named_parameters()})
    return y.detach(), s.detach(), grads


def _assert_grads(g_fast, g_ref, atol=2e-5, rtol=1e-4):
    assert g_fast.keys() == g_ref.keys()
    for k in g_ref:
        assert g_fast[k] is not None, k
        torch.testing.assert_close(g_fast[k], g_ref[k], atol=atol, rtol=rtol, msg=lambda m: f"grad of {k}: {m}")


def _assert_matches_stepwise(fast, slow, x, state0, starts, g):
    """The fused sequence path against the stock step-by-step reference with resets: outputs, final state and every
    gradient (of random output and state weights drawn from ``g``); returns the fused outputs."""
    T, B, H = x.shape[0], x.shape[1], fast.hidden_size
    gy, gs = torch.randn(T, B, H, generator=g), torch.randn(B, *fast.state_shape, generator=g)
    y_f, s_f, g_f = _run(lambda c, x_, s_: c.forward_sequence(x_, s_, starts), fast, x, state0, gy, gs)
    y_r, s_r, g_r = _run(lambda c, x_, s_: _stepwise(c, x_, s_, starts), slow, x, state0, gy, gs)
    torch.testing.assert_close(y_f, y_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_f, s_r, atol=1e-5, rtol=1e-5)
    _assert_grads(g_f, g_r)
    return y_f


_rng = random.Random(0)
# T, B, F, H: a few fixed ones and a few drawn at random (odd sizes exercise the vector loops' remainders)
SHAPES = [(1, 1, 3, 4), (7, 3, 5, 8), (16, 8, 12, 32), (33, 5, 64, 64)] + [
    (_rng.randint(1, 40), _rng.randint(1, 9), _rng.randint(1, 24), _rng.randint(1, 45)) for _ in range(3)]
RESET_SHAPES = [(9, 4, 5, 8), (24, 6, 10, 16)] + [
    (_rng.randint(2, 40), _rng.randint(1, 9), _rng.randint(1, 24), _rng.randint(1, 45)) for _ in range(2)]


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "T{}-B{}-F{}-H{}".format(*s))
def test_matches_torch_rnn_without_resets(name, num_layers, shape):
    T, B, F, H = shape
    fast, slow = _pair(name, F, H, num_layers, seed=T * 100 + B)
    x = torch.randn(T, B, F)
    state0 = torch.randn(B, *fast.state_shape) * 0.5
    starts = torch.zeros(T, B, dtype=torch.bool)
    gy, gs = torch.randn(T, B, H), torch.randn(B, *fast.state_shape)
    seq = lambda c, x_, s_: c.forward_sequence(x_, s_, starts)  # noqa: E731
    y_f, s_f, g_f = _run(seq, fast, x, state0, gy, gs)
    y_r, s_r, g_r = _run(seq, slow, x, state0, gy, gs)  # stock: one torch.nn.GRU/LSTM call
    torch.testing.assert_close(y_f, y_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_f, s_r, atol=1e-5, rtol=1e-5)
    _assert_grads(g_f, g_r)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("shape", RESET_SHAPES, ids=lambda s: "T{}-B{}-F{}-H{}".format(*s))
def test_matches_stepwise_reference_with_resets(name, num_layers, shape):
    T, B, F, H = shape
    fast, slow = _pair(name, F, H, num_layers, seed=7 + T)
    g = torch.Generator().manual_seed(T)
    x = torch.randn(T, B, F, generator=g)
    state0 = torch.randn(B, *fast.state_shape, generator=g)
    starts = torch.rand(T, B, generator=g) < 0.25
    starts[0, 0] = True
    starts[T // 2, :] = True  # every env at once
    y_f = _assert_matches_stepwise(fast, slow, x, state0, starts, g)
    # float episode_start flags (0/1) act the same as bools
    y_f2, _ = fast.forward_sequence(x, state0, starts.float())
    torch.testing.assert_close(y_f2, y_f)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("B", range(1, 10))
def test_every_row_block_of_the_step_product(name, B):
    """The per-step product's own path (up to 8 rows, split into blocks of 6, 5, 2 and 1) against the step-by-step
    reference at every batch size it splits differently, with a hidden size whose gate columns (3H = 135, 4H = 180)
    leave remainders after the 40-, 24-, 16- and 8-column blocks; B = 9 takes the BLAS path."""
    T, F, H = 12, 7, 45
    fast, slow = _pair(name, F, H, 1, seed=B)
    g = torch.Generator().manual_seed(B)
    x, state0 = torch.randn(T, B, F, generator=g), torch.randn(B, *fast.state_shape, generator=g)
    starts = torch.rand(T, B, generator=g) < 0.2
    _assert_matches_stepwise(fast, slow, x, state0, starts, g)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_saturated_gates_stay_finite_and_match(name):
    """Pre-activations far outside the exp's range (|x| up to ~1e3): the float kernel clamps, never overflows."""
    fast, slow = _pair(name, 6, 10, 2, seed=4)
    x = torch.randn(12, 3, 6) * 300.0
    state0 = torch.randn(3, *fast.state_shape) * 50.0
    starts = torch.zeros(12, 3)
    gy, gs = torch.randn(12, 3, 10), torch.randn(3, *fast.state_shape)
    seq = lambda c, x_, s_: c.forward_sequence(x_, s_, starts)  # noqa: E731
    y_f, s_f, g_f = _run(seq, fast, x, state0, gy, gs)
    y_r, s_r, g_r = _run(seq, slow, x, state0, gy, gs)
    assert torch.isfinite(y_f).all() and all(torch.isfinite(g).all() for g in g_f.values())
    torch.testing.assert_close(y_f, y_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_f, s_r, atol=1e-4, rtol=1e-5)
    _assert_grads(g_f, g_r, atol=1e-4, rtol=1e-3)  # large magnitudes: float round-off of long sums


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gradcheck_float64(name, num_layers):
    torch.manual_seed(3)
    T, B, F, H = 4, 3, 3, 4
    core = make_core(name, F, H, num_layers, kernel="fused").double()
    weights = [w.detach().clone().requires_grad_(True) for w in core.rnn._flat_weights]
    x = torch.randn(T, B, F, dtype=torch.float64, requires_grad=True)
    state0 = torch.randn(B, *core.state_shape, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(T, B, dtype=torch.float64)
    keep[2, 1] = 0.0  # a reset in the middle
    keep[0, 2] = 0.0  # and one at the start
    seq = fused.gru_sequence if name == "gru" else fused.lstm_sequence

    def fn(x_, s_, *ws):
        return seq(x_, s_, keep, ws)

    assert torch.autograd.gradcheck(fn, (x, state0, *weights), eps=1e-6, atol=1e-6, rtol=1e-5)
    # and without resets (the kernel's no-keep path)
    assert torch.autograd.gradcheck(lambda x_, s_, *ws: seq(x_, s_, None, ws), (x, state0, *weights),
                                    eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_float64_core_matches_stock(name):
    fast, slow = _pair(name, 5, 6, 2, dtype=torch.float64)
    x = torch.randn(8, 3, 5, dtype=torch.float64)
    state0 = torch.randn(3, *fast.state_shape, dtype=torch.float64)
    starts = torch.zeros(8, 3)
    starts[4, 1] = 1
    y_f, s_f = fast.forward_sequence(x, state0, starts)
    y_r, s_r = _stepwise(slow, x, state0, starts)
    torch.testing.assert_close(y_f, y_r, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(s_f, s_r, atol=1e-12, rtol=1e-10)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("B", [1, 6])
def test_fused_step_matches_stock_step(name, num_layers, B):
    fast, slow = _pair(name, 7, 16, num_layers, seed=B)
    x = torch.randn(B, 7)
    state = torch.randn(B, *fast.state_shape)
    starts = torch.zeros(B, dtype=torch.bool)
    starts[0] = True
    y_r, s_r = slow.step(x, state, starts)
    with torch.no_grad():  # rollout path: the C++ step kernel, no autograd
        y_f, s_f = fast.step(x, state, starts)
        assert y_f.grad_fn is None
    torch.testing.assert_close(y_f, y_r.detach(), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s_f, s_r.detach(), atol=1e-6, rtol=1e-5)
    with torch.inference_mode():  # act path: _step without resets, on a non-contiguous state view
        wide = torch.cat([state.reshape(B, -1), torch.randn(B, 3)], dim=1)
        view = wide[:, : state[0].numel()].reshape(B, *fast.state_shape)
        y_a, s_a = fast.step(x, view)
        y_b, s_b = slow._step(x, state)
    torch.testing.assert_close(y_a, y_b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s_a, s_b, atol=1e-6, rtol=1e-5)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_step_under_autograd_has_correct_gradients(name):
    fast, slow = _pair(name, 4, 6, 2, seed=11)
    x = torch.randn(3, 4)
    state0 = torch.randn(3, *fast.state_shape)
    starts = torch.tensor([0.0, 1.0, 0.0])
    gy, gs = torch.randn(3, 6), torch.randn(3, *fast.state_shape)
    step = lambda c, x_, s_: c.step(x_, s_, starts)  # noqa: E731
    y_f, s_f, g_f = _run(step, fast, x, state0, gy, gs)
    y_r, s_r, g_r = _run(step, slow, x, state0, gy, gs)
    torch.testing.assert_close(y_f, y_r, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s_f, s_r, atol=1e-6, rtol=1e-5)
    _assert_grads(g_f, g_r)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_backward_twice_with_retained_graph(name):
    fast, _ = _pair(name, 3, 5, 1)
    x = torch.randn(6, 2, 3)
    starts = torch.zeros(6, 2)
    starts[3, 0] = 1
    y, s = fast.forward_sequence(x, fast.initial_state(2), starts)
    loss = y.square().sum() + s.sum()
    g1 = torch.autograd.grad(loss, list(fast.parameters()), retain_graph=True)
    g2 = torch.autograd.grad(loss, list(fast.parameters()))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_state_dict_is_the_same_whichever_kernel(name):
    fast, slow = _pair(name, 3, 5, 2)
    assert list(fast.state_dict()) == list(slow.state_dict()) == list(make_core(name, 3, 5, 2).state_dict())


class _Act(torch.nn.Module):
    def __init__(self, core):
        super().__init__()
        self.core = core

    def forward(self, x, s):
        return self.core.step(x, s)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_tracing_and_export_take_the_stock_path(name):
    """A trace or an export (ONNX) must record torch ops, not bake in the extension call's outputs."""
    fast, slow = _pair(name, 3, 5, 1)
    module = _Act(fast).eval()
    x1, s1 = torch.randn(2, 3), fast.initial_state(2)
    x2, s2 = torch.randn(2, 3), torch.randn(2, *fast.state_shape)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, (x1, s1), check_trace=False)
        torch.testing.assert_close(traced(x2, s2), slow._step(x2, s2))
    exported = torch.export.export(module, (x1, s1))
    torch.testing.assert_close(exported.module()(x2, s2), slow._step(x2, s2))


# ----------------------------------------------------------------------------------------------- kernel option
@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_kernel_option(name, monkeypatch):
    with pytest.raises(ValueError, match=r"kernel='fast': expected one of 'auto', 'fused', 'stock'"):
        make_core(name, 3, 4, kernel="fast")
    assert make_core(name, 3, 4).kernel == "auto"
    assert make_core(name, 3, 4).kernel_in_use == "fused"
    assert "kernel='auto'" in repr(make_core(name, 3, 4))
    monkeypatch.setenv(kernels.ENV_KERNEL, "stock")
    assert make_core(name, 3, 4).kernel == "stock"
    assert make_core(name, 3, 4, kernel="fused").kernel_in_use == "fused"  # an explicit choice wins
    monkeypatch.setenv(kernels.ENV_KERNEL, "nonsense")
    with pytest.raises(ValueError, match="RECURRENT_AGENTS_KERNEL='nonsense'"):
        make_core(name, 3, 4)


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_fused_rejects_what_it_cannot_run(name):
    core = make_core(name, 3, 4, kernel="fused")
    with pytest.raises(ValueError, match="kernel='fused' runs on CPU float32/float64"):
        core.forward_sequence(torch.randn(2, 1, 3, dtype=torch.float64), core.initial_state(1), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="kernel='fused' runs on CPU float32/float64"):
        core.to(torch.bfloat16).step(torch.randn(1, 3, dtype=torch.bfloat16),
                                     core.initial_state(1).to(torch.bfloat16), torch.zeros(1))


@needs_fused
@pytest.mark.parametrize("name", RECURRENT)
def test_auto_takes_the_stock_path_where_fused_cannot_run(name, monkeypatch):
    """kernel='auto' on tensors the fused kernels do not take (bfloat16 here) runs the stock path: the same outputs,
    state and gradients as a kernel='stock' core with the same weights, sequences with resets and steps alike, and the
    extension is never called. A mixed-dtype call gets torch's own error, not the fused path's."""
    torch.manual_seed(6)
    auto = make_core(name, 3, 4, 2)
    assert auto.kernel == "auto" and auto.kernel_in_use == "fused"  # the kernels are there: float32 runs them
    stock = make_core(name, 3, 4, 2, kernel="stock")
    stock.load_state_dict(auto.state_dict())
    reference = make_core(name, 3, 4, 2, kernel="stock")  # float32, step by step
    reference.load_state_dict(auto.state_dict())
    auto, stock = auto.to(torch.bfloat16), stock.to(torch.bfloat16)
    assert auto.kernel_in_use == "stock"

    def not_here(*args, **kwargs):
        raise AssertionError("the fused kernel was called on bfloat16 tensors")

    monkeypatch.setattr(auto.fused, "sequence_fn", not_here)
    monkeypatch.setattr(auto.fused, "step_fn", not_here)
    x = torch.randn(7, 2, 3).to(torch.bfloat16)
    state0 = torch.randn(2, *auto.state_shape).to(torch.bfloat16)
    starts = torch.zeros(7, 2)
    starts[3, 1] = 1.0
    gy, gs = torch.randn(7, 2, 4).to(torch.bfloat16), torch.randn(2, *auto.state_shape).to(torch.bfloat16)
    seq = lambda c, x_, s_: c.forward_sequence(x_, s_, starts)  # noqa: E731
    y_a, s_a, g_a = _run(seq, auto, x, state0, gy, gs)
    y_s, s_s, g_s = _run(seq, stock, x, state0, gy, gs)
    torch.testing.assert_close(y_a, y_s, atol=0, rtol=0)
    torch.testing.assert_close(s_a, s_s, atol=0, rtol=0)
    _assert_grads(g_a, g_s, atol=0, rtol=0)
    with torch.no_grad():  # and the stock path is right: the float32 step-by-step result, to bfloat16's precision
        y_r, s_r = _stepwise(reference, x.float(), state0.float(), starts)
    torch.testing.assert_close(y_a.float(), y_r, atol=3e-2, rtol=0)
    torch.testing.assert_close(s_a.float(), s_r, atol=3e-2, rtol=0)
    with torch.no_grad():  # the rollout's step path
        step_a, step_s = auto.step(x[0], state0, starts[3]), stock.step(x[0], state0, starts[3])
    for a, b in zip(step_a, step_s):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    mixed = make_core(name, 3, 4)
    with pytest.raises((RuntimeError, ValueError), match="dtype") as info:
        mixed.forward_sequence(torch.randn(2, 1, 3, dtype=torch.float64), mixed.initial_state(1), torch.zeros(2, 1))
    assert "kernel='fused'" not in str(info.value)


@pytest.fixture
def failing_build(monkeypatch):
    """The kernel loader fails as on a machine without a compiler; the real state is restored afterwards."""
    def fail():
        raise RuntimeError("Error building extension 'ra_rnn_kernels': c++: command not found")

    monkeypatch.setattr(kernels, "_build", fail)
    monkeypatch.delenv(kernels.ENV_KERNEL, raising=False)
    kernels._reset()
    yield
    kernels._reset()


@pytest.mark.parametrize("name", RECURRENT)
def test_auto_falls_back_with_one_warning(name, failing_build):
    torch.manual_seed(5)
    x = torch.randn(9, 3, 4)
    starts = torch.zeros(9, 3)
    starts[4, 1] = 1
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cores = [make_core(name, 4, 6, 2) for _ in range(3)]
        assert [c.kernel_in_use for c in cores] == ["stock"] * 3
        core = cores[0]
        state0 = torch.randn(3, *core.state_shape)
        y, s = core.forward_sequence(x, state0, starts)
        core.step(x[0], state0, starts[0])
        with torch.inference_mode():
            core.step(x[0], state0)
    ours = [w for w in caught if "fused CPU GRU/LSTM kernels could not be built" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]
    assert issubclass(ours[0].category, RuntimeWarning)
    message = str(ours[0].message)
    assert "c++: command not found" in message and "pip install ninja" in message and "kernel='stock'" in message
    # the stock path's results are still right
    ref = make_core(name, 4, 6, 2, kernel="stock")
    ref.load_state_dict(core.state_dict())
    y_r, s_r = _stepwise(ref, x, state0, starts)
    torch.testing.assert_close(y, y_r, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s, s_r, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", RECURRENT)
def test_fused_that_cannot_build_is_a_clear_error(name, failing_build):
    with pytest.raises(kernels.KernelBuildError, match=r"could not be built: RuntimeError: .*command not found"):
        make_core(name, 4, 6, kernel="fused")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "stock" never tries to build, so never warns
        core = make_core(name, 4, 6, kernel="stock")
        assert core.kernel_in_use == "stock"
        core.forward_sequence(torch.randn(3, 2, 4), core.initial_state(2), torch.zeros(3, 2))
