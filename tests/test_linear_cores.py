"""The scan behind minGRU, LRU, FFM and S6 (agents/cores/scan.py) and what those cores add to the contract that
tests/test_cores.py pins for every core."""

import math

import pytest
import torch

from agents.cores import core_param_count, make_core
from agents.cores.scan import cmul, linear_scan, reset_decay

torch.set_num_threads(1)
LINEAR = ["mingru", "lru", "ffm", "s6"]


def _reference(a, b, h0, starts, complex):
    """The recurrence one step at a time, written out (complex numbers as torch complex tensors)."""
    if complex:
        a, b, h0 = (torch.view_as_complex(t.contiguous()) for t in (a.expand_as(b), b, h0))
    else:
        a = a.expand_as(b)
    h, out = h0, []
    for t in range(b.shape[0]):
        keep = (~starts[t]).to(h.real.dtype).reshape(-1, *([1] * (h.dim() - 1)))
        h = a[t] * keep * h + b[t]
        out.append(h)
    out = torch.stack(out)
    return torch.view_as_real(out) if complex else out


@pytest.mark.parametrize("complex", [False, True])
@pytest.mark.parametrize("method", ["fused", "loop", "parallel"])
@pytest.mark.parametrize("T", [1, 2, 5, 16, 37])
def test_scan_equals_the_recurrence_values_and_gradients(complex, method, T):
    torch.manual_seed(T)
    B, H = 3, 4
    extra = (2,) if complex else ()
    a = (0.9 * torch.rand(T, B, H, *extra, dtype=torch.double)).requires_grad_()
    b = torch.randn(T, B, H, *extra, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(B, H, *extra, dtype=torch.double, requires_grad=True)
    starts = torch.rand(T, B) < 0.2
    if T > 3:
        starts[3, :] = True
    got = linear_scan(reset_decay(a, starts), b, h0, complex=complex, method=method)
    want = _reference(a, b, h0, starts, complex)
    torch.testing.assert_close(got, want)
    w = torch.randn_like(want)
    g_got = torch.autograd.grad((got * w).sum(), (a, b, h0))
    g_want = torch.autograd.grad((want * w).sum(), (a, b, h0))
    for x, y in zip(g_got, g_want):
        torch.testing.assert_close(x, y)


def test_a_reset_drops_the_state_carried_in():
    a, b = torch.ones(4, 1, 1), torch.zeros(4, 1, 1)
    starts = torch.tensor([[False], [False], [True], [False]])
    for method in ("fused", "loop", "parallel"):
        h = linear_scan(reset_decay(a, starts), b, torch.full((1, 1), 7.0), method=method)
        assert h.flatten().tolist() == [7.0, 7.0, 0.0, 0.0]


def test_cmul_is_the_complex_product():
    x, y = torch.randn(5, 2), torch.randn(5, 2)
    want = torch.view_as_real(torch.view_as_complex(x) * torch.view_as_complex(y))
    torch.testing.assert_close(cmul(x, y), want)


def test_unknown_scan_method_is_a_clear_error():
    with pytest.raises(ValueError, match=r"scan='tree': expected one of auto, fused, loop, parallel"):
        make_core("lru", 3, 4, scan="tree")


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_every_scan_method_trains_the_same_core(name, num_layers):
    """The three scan methods give one core the same outputs, states and gradients over a long sequence with
    resets (test_cores.py checks each against steps)."""
    torch.manual_seed(0)
    T, B, F, H = 40, 3, 5, 6
    cores = [make_core(name, F, H, num_layers, scan=m) for m in ("loop", "parallel", "fused")]
    for core in cores[1:]:
        core.load_state_dict(cores[0].state_dict())
    x = torch.randn(T, B, F)
    starts = torch.rand(T, B) < 0.1
    state0 = torch.randn(B, *cores[0].state_shape)
    outs, grads = [], []
    for core in cores:
        y, s = core.forward_sequence(x, state0, starts)
        (y.pow(2).sum() + s.pow(2).sum()).backward()
        outs.append((y, s))
        grads.append([p.grad for p in core.parameters()])
    for k in (1, 2):
        torch.testing.assert_close(outs[0][0], outs[k][0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(outs[0][1], outs[k][1], atol=1e-5, rtol=1e-4)
        for g0, g1 in zip(grads[0], grads[k]):
            torch.testing.assert_close(g0, g1, atol=1e-4, rtol=1e-4)


def test_auto_takes_the_fused_scan_and_the_loop_where_it_cannot(monkeypatch):
    """``scan="auto"`` runs the C++ scan on CPU floats (the torch loop never runs), the loop in bfloat16 and under
    ``RECURRENT_AGENTS_KERNEL=stock``; ``scan="fused"`` refuses tensors it cannot run."""
    from agents.cores import scan as scan_module

    core = make_core("lru", 3, 4)
    assert core.kernel_in_use == "fused"
    x, starts = torch.randn(6, 2, 3), torch.zeros(6, 2, dtype=torch.bool)
    calls = []
    real_fused = scan_module.fused_scan
    monkeypatch.setattr(scan_module, "fused_scan", lambda *a: calls.append(1) or real_fused(*a))
    core.forward_sequence(x, core.initial_state(2), starts)
    assert calls == [1]
    core.to(torch.bfloat16).forward_sequence(x.bfloat16(), core.initial_state(2), starts)
    assert calls == [1] and core.kernel_in_use == "loop"
    core.float()
    monkeypatch.setenv("RECURRENT_AGENTS_KERNEL", "stock")
    monkeypatch.setattr(scan_module.scan_applies.__globals__["_kernels"], "_module", None)
    assert core.kernel_in_use == "loop"
    core.forward_sequence(x, core.initial_state(2), starts)
    assert calls == [1]
    with pytest.raises(ValueError, match=r"scan='fused' runs on CPU float32/float64 tensors"):
        linear_scan(torch.ones(2, 1, 1, dtype=torch.bfloat16), torch.ones(2, 1, 1, dtype=torch.bfloat16),
                    torch.ones(1, 1, dtype=torch.bfloat16), method="fused")


def test_mingru_is_the_papers_recurrence():
    torch.manual_seed(0)
    core = make_core("mingru", 3, 4)
    x, h = torch.randn(2, 3), torch.randn(2, 1, 4)
    gate, cand = core.layers[0](x).chunk(2, dim=-1)
    z = torch.sigmoid(gate)
    g = torch.where(cand >= 0, cand + 0.5, torch.sigmoid(cand))
    y, s = core.step(x, h)
    torch.testing.assert_close(y, (1 - z) * h[:, 0] + z * g)
    assert core_param_count("mingru", 64, 128) == 2 * 128 * (64 + 1)


def test_lru_eigenvalues_start_on_the_ring_and_stay_stable():
    torch.manual_seed(0)
    core = make_core("lru", 4, 256, r_min=0.5, r_max=0.9, max_phase=math.pi / 4)
    lam = core.layers[0].decay().detach()
    mod = lam.norm(dim=-1)
    assert mod.min() >= 0.5 - 1e-6 and mod.max() <= 0.9 + 1e-6
    assert torch.atan2(lam[:, 1], lam[:, 0]).abs().max() <= math.pi / 4 + 1e-6
    gamma = torch.exp(core.layers[0].gamma_log).detach()
    torch.testing.assert_close(gamma, torch.sqrt(1 - mod ** 2))  # the paper's normalisation at init
    with pytest.raises(ValueError, match=r"r_min=0.9, r_max=0.5: expected 0 <= r_min < r_max <= 1"):
        make_core("lru", 4, 8, r_min=0.9, r_max=0.5)


def test_ffm_decays_span_its_periods():
    core = make_core("ffm", 4, 8)  # memory 32, context 8, periods 1 .. 1024
    mod = core.layers[0].decay().detach().norm(dim=-1)  # [32, 4]
    assert mod.max() < 1 and float(mod[-1, 0] ** 1024) == pytest.approx(0.01, rel=1e-3)  # 1% left after 1,024 steps
    assert mod[0, 0] ** 7 < 0.01  # the fastest channel forgets within a few steps
    assert core.state_shape == (1, 32 * 8)
    with pytest.raises(ValueError, match=r"context_size=3: expected an even integer >= 2"):
        make_core("ffm", 4, 8, context_size=3)


def test_s6_step_size_is_selective_and_initialised_in_range():
    torch.manual_seed(0)
    core = make_core("s6", 4, 32)
    layer = core.layers[0]
    dt = torch.nn.functional.softplus(layer.dt_proj.bias)
    assert dt.min() >= 1e-3 - 1e-6 and dt.max() <= 0.1 + 1e-6
    torch.testing.assert_close(-torch.exp(layer.A_log[0]), -torch.arange(1.0, 17.0))  # S4D-real
    assert core.state_shape == (1, 64 * 16 + 3 * 64)
    # the decay depends on the input: two inputs, two different a_t
    x = torch.randn(2, 1, 4)
    u = torch.nn.functional.silu(layer.in_proj(x).chunk(2, dim=-1)[0])
    dts = torch.nn.functional.softplus(layer.dt_proj(layer.x_proj(u)[..., :core.dt_rank]))
    assert not torch.allclose(dts[0], dts[1])
    with pytest.raises(ValueError, match=r"d_state=0: expected an integer >= 1"):
        make_core("s6", 4, 8, d_state=0)


def test_s6_convolution_never_sees_the_previous_episode():
    """A reset mid-sequence: the outputs after it equal a fresh run, even though the convolution looks back
    d_conv - 1 steps (test_cores.py checks this through the whole core for every core)."""
    torch.manual_seed(0)
    core = make_core("s6", 3, 8, d_conv=4)
    x = torch.randn(9, 2, 3)
    starts = torch.zeros(9, 2, dtype=torch.bool)
    starts[5, 0] = True
    y, s = core.forward_sequence(x, torch.randn(2, *core.state_shape), starts)
    fresh, s_fresh = core.forward_sequence(x[5:, :1], core.initial_state(1), torch.zeros(4, 1))
    torch.testing.assert_close(y[5:, :1], fresh)
    torch.testing.assert_close(s[:1], s_fresh)


@pytest.mark.parametrize("name", ["lru", "ffm", "s6"])
def test_step_constants_follow_every_parameter_change(name):
    """Parameter-only tensors (decays, normalisations) are reused between no-grad steps; an optimizer step, a loaded
    state dict or a dtype change must never leave a step on the old values."""
    torch.manual_seed(0)
    core = make_core(name, 3, 8)
    x, state = torch.randn(2, 3), torch.randn(2, *core.state_shape)

    def fresh(reference):
        other = make_core(name, 3, 8).to(next(reference.parameters()).dtype)
        other.load_state_dict(reference.state_dict())
        return other

    with torch.inference_mode():
        core.step(x, state)  # fills the cache
    optimizer = torch.optim.SGD(core.parameters(), lr=0.5)
    y, s = core.forward_sequence(x.unsqueeze(0), state, torch.zeros(1, 2, dtype=torch.bool))
    (y.sum() + s.sum()).backward()
    optimizer.step()
    with torch.inference_mode():
        got = core.step(x, state)
        want = fresh(core).step(x, state)
    torch.testing.assert_close(got, want)
    core.load_state_dict(make_core(name, 3, 8).state_dict())
    with torch.no_grad():
        torch.testing.assert_close(core.step(x, state), fresh(core).step(x, state))
    core.double()
    with torch.no_grad():
        got = core.step(x.double(), state.double())
        torch.testing.assert_close(got, fresh(core).step(x.double(), state.double()))
