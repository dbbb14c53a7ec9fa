"""The recurrent contract, pinned for every core in CORES."""

import os

import pytest
import torch

from agents import CORES, core_param_count, match_hidden_size
from agents import kernels
from agents.cores import get_core_class, make_core

torch.set_num_threads(1)
ALL_CORES = sorted(CORES)


def _stepwise(core, x, state, starts):
    ys = []
    for t in range(x.shape[0]):
        y, state = core.step(x[t], state, starts[t])
        ys.append(y)
    return torch.stack(ys), state


def _inputs(core, T=17, B=5):
    """Seeded inputs ``x [T, B, F]``, resets ``starts [T, B]`` (random ones, plus every env at once mid-sequence) and a
    random initial state for ``core``."""
    torch.manual_seed(0)
    x = torch.randn(T, B, core.input_size)
    starts = torch.rand(T, B) < 0.2
    starts[0, 1] = True
    starts[7, :] = True  # every env resets at once in the middle
    return x, starts, torch.randn(B, *core.state_shape)


@pytest.mark.parametrize("name", ALL_CORES)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_sequence_equals_steps_with_resets(name, num_layers):
    torch.manual_seed(0)
    T, B, F, H = 17, 5, 6, 8
    core = make_core(name, F, H, num_layers)
    x, starts, state0 = _inputs(core, T, B)
    y_seq, s_seq = core.forward_sequence(x, state0, starts)
    y_step, s_step = _stepwise(core, x, state0, starts)
    assert y_seq.shape == (T, B, core.output_size)
    assert s_seq.shape == (B, *core.state_shape)
    torch.testing.assert_close(y_seq, y_step, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_seq, s_step, atol=1e-5, rtol=1e-5)


def _grads(core, run):
    """The gradients of sum(y^2) w.r.t. ``core``'s parameters, ``y`` the first output of ``run()``."""
    core.zero_grad()
    y, _ = run()
    y.pow(2).sum().backward()
    return [p.grad.clone() for p in core.parameters()]


def _all_grads(core, run, x, state0):
    """The gradients of sum(y^2) + sum(final state) w.r.t. ``x``, ``state0`` and every parameter of ``core``."""
    x = x.detach().clone().requires_grad_(True)
    state0 = state0.detach().clone().requires_grad_(True)
    core.zero_grad(set_to_none=True)
    y, s = run(x, state0)
    (y.pow(2).sum() + s.sum()).backward()
    return {"x": x.grad, "state0": state0.grad, **{n: p.grad for n, p in core.named_parameters()}}


# (core, kernel): every core on its default path, and the recurrent ones on the stock path too, whose sequences are
# cut at the resets and run through torch.nn.GRU / LSTM piece by piece while its steps run torch's cell functions
PATHS = [(name, None) for name in ALL_CORES] + [("gru", "stock"), ("lstm", "stock")]


@pytest.mark.parametrize("name, kernel", PATHS, ids=[f"{n}-{k or 'default'}" for n, k in PATHS])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_sequence_gradients_equal_steps(name, kernel, num_layers):
    """The sequence path with resets (random ones, one at t=0, and every env at once mid-sequence) gives the same
    gradients as stepping, w.r.t. the inputs, the initial state and every parameter."""
    torch.manual_seed(1)
    core = make_core(name, 4, 5, num_layers, **({"kernel": kernel} if kernel else {}))
    if kernel == "stock":
        assert core.kernel_in_use == "stock" and not core.resets_in_kernel
    x, starts, state0 = _inputs(core, T=11, B=3)
    g_seq = _all_grads(core, lambda x_, s_: core.forward_sequence(x_, s_, starts), x, state0)
    g_step = _all_grads(core, lambda x_, s_: _stepwise(core, x_, s_, starts), x, state0)
    assert g_seq.keys() == g_step.keys()
    for k in g_seq:
        if g_step[k] is None:  # e.g. a memoryless core's state
            assert g_seq[k] is None or not g_seq[k].any(), k
            continue
        torch.testing.assert_close(g_seq[k], g_step[k], atol=1e-5, rtol=1e-4, msg=lambda m: f"grad of {k}: {m}")
    if state0.numel():  # the resets cut the gradient: nothing reaches state0 for an env reset at t=0
        assert not g_seq["state0"][1].any() and g_seq["state0"][0].any()


@pytest.mark.parametrize("name", ALL_CORES)
def test_states_of_different_envs_never_leak(name):
    torch.manual_seed(2)
    T, B, F, H = 10, 4, 3, 6
    core = make_core(name, F, H)
    x = torch.randn(T, B, F)
    starts = torch.zeros(T, B)
    state0 = torch.randn(B, *core.state_shape)
    y, s = core.forward_sequence(x, state0, starts)
    x2, state2 = x.clone(), state0.clone()
    x2[:, 0] += 5.0  # change everything env 0 sees
    if state2.numel():
        state2[0] += 5.0
    y2, s2 = core.forward_sequence(x2, state2, starts)
    torch.testing.assert_close(y[:, 1:], y2[:, 1:])
    torch.testing.assert_close(s[1:], s2[1:])
    # and a batch of B gives each env what it would get alone
    for b in range(B):
        yb, sb = core.forward_sequence(x[:, b:b + 1], state0[b:b + 1], starts[:, b:b + 1])
        torch.testing.assert_close(yb[:, 0], y[:, b], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(sb[0], s[b], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ALL_CORES)
def test_episode_start_forgets_the_past(name):
    torch.manual_seed(3)
    F, H = 3, 6
    core = make_core(name, F, H)
    x = torch.randn(6, 2, F)
    starts = torch.zeros(6, 2)
    starts[3] = 1.0
    state0 = torch.randn(2, *core.state_shape)
    y, _ = core.forward_sequence(x, state0, starts)
    fresh, _ = core.forward_sequence(x[3:], core.initial_state(2), torch.zeros(3, 2))
    torch.testing.assert_close(y[3:], fresh, atol=1e-6, rtol=1e-5)
    if name != "mlp":  # a recurrent core really does remember: without the reset the output differs
        y_noreset, _ = core.forward_sequence(x, state0, torch.zeros(6, 2))
        assert not torch.allclose(y_noreset[3:], fresh, atol=1e-4)


@pytest.mark.parametrize("name", ALL_CORES)
def test_initial_state_and_shapes(name):
    core = CORES[name](input_size=7, hidden_size=9, num_layers=3)
    state = core.initial_state(batch_size=4)
    assert state.shape[0] == 4 and tuple(state.shape[1:]) == core.state_shape
    assert torch.count_nonzero(state) == 0
    y, s = core.step(torch.randn(4, 7), state, torch.zeros(4))
    assert y.shape == (4, core.output_size) == (4, 9)
    assert s.shape == state.shape


@pytest.mark.parametrize("name", ALL_CORES)
def test_bad_shapes_name_what_was_received(name):
    core = make_core(name, 5, 8)
    state = core.initial_state(2)
    with pytest.raises(ValueError, match=r"x has shape \(2, 4\): expected \[B, 5\]"):
        core.step(torch.randn(2, 4), state, torch.zeros(2))
    with pytest.raises(ValueError, match=r"episode_start has shape"):
        core.forward_sequence(torch.randn(3, 2, 5), state, torch.zeros(3))
    with pytest.raises(ValueError, match="state has shape"):
        core.step(torch.randn(3, 5), state, torch.zeros(3))
    with pytest.raises(ValueError, match="hidden_size=0"):
        make_core(name, 5, 0)


def test_unknown_core_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown core 'gur' \(did you mean gru\?\): expected one of ffm, gru, lru, lstm, mingru, mlp, s6"):
        get_core_class("gur")


def test_parameter_counts():
    # 3 vs 4 gate blocks: GRU has exactly 3/4 of an LSTM's parameters at equal size
    for h in (64, 128, 256):
        assert core_param_count("gru", 64, h) * 4 == core_param_count("lstm", 64, h) * 3
    assert core_param_count("lstm", 64, 128) == 4 * (128 * 64 + 128 * 128 + 2 * 128)


@pytest.mark.parametrize("core,target", [("gru", "lstm"), ("lstm", "gru"), ("mlp", "lstm"), ("mlp", "gru"),
                                         *[(c, "lstm") for c in ("mingru", "lru", "ffm", "s6")],
                                         *[("lstm", c) for c in ("mingru", "lru", "ffm", "s6")]])
@pytest.mark.parametrize("target_hidden", [64, 128, 256])
def test_match_hidden_size_within_two_percent(core, target, target_hidden):
    h = match_hidden_size(core, target, target_hidden, input_size=64)
    mine, theirs = core_param_count(core, 64, h), core_param_count(target, 64, target_hidden)
    assert abs(mine - theirs) / theirs < 0.02, (h, mine, theirs)


def test_match_gru_to_lstm_128():
    assert match_hidden_size("gru", "lstm", 128, input_size=64) == 152


FUSED = pytest.param("fused", marks=pytest.mark.skipif(os.environ.get(kernels.ENV_KERNEL) == "stock",
                                                       reason=f"{kernels.ENV_KERNEL}=stock"))


def _core_with_gate_bias(name, kernel, num_layers, H, **bias):
    """A core built with one gate bias option; checks that gate block 1 of every layer holds it (``bias_hh`` 0 there)
    and the other blocks keep torch's uniform init."""
    if kernel == "fused" and not kernels.available():
        pytest.skip("the fused kernels cannot be built on this machine: " + (kernels._error or "").splitlines()[0])
    torch.manual_seed(0)
    core = make_core(name, 4, H, num_layers, kernel=kernel, **bias)
    (value,) = bias.values()
    bound = H ** -0.5  # torch's uniform init range
    for k in range(num_layers):
        b_ih, b_hh = getattr(core.rnn, f"bias_ih_l{k}"), getattr(core.rnn, f"bias_hh_l{k}")
        assert torch.all(b_ih[H:2 * H] == value) and torch.all(b_hh[H:2 * H] == 0.0)
        assert b_ih[:H].abs().max() <= bound and b_ih[2 * H:].abs().max() <= bound
    return core


@pytest.mark.parametrize("kernel", ["stock", FUSED])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_lstm_forget_bias_sets_the_forget_gate(kernel, num_layers):
    H = 6
    core = _core_with_gate_bias("lstm", kernel, num_layers, H, forget_bias=30.0)
    for k in range(num_layers):
        b_ih, b_hh = getattr(core.rnn, f"bias_ih_l{k}"), getattr(core.rnn, f"bias_hh_l{k}")
        with torch.no_grad():  # input gate shut: with the forget gate open the cell must keep its content exactly
            b_ih[:H].fill_(-30.0)
            b_hh[:H].zero_()
    state = torch.randn(3, *core.state_shape)
    x = torch.randn(10, 3, 4)
    no_starts = torch.zeros(10, 3)
    _, after = _stepwise(core, x, state, no_starts)
    L = num_layers
    torch.testing.assert_close(after[:, L:], state[:, L:], atol=1e-6, rtol=0)  # cell rows unchanged
    _, seq_after = core.forward_sequence(x, state, no_starts)
    torch.testing.assert_close(seq_after[:, L:], state[:, L:], atol=1e-6, rtol=0)


@pytest.mark.parametrize("kernel", ["stock", FUSED])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_gru_update_bias_sets_the_update_gate(kernel, num_layers):
    H = 6
    core = _core_with_gate_bias("gru", kernel, num_layers, H, update_bias=30.0)
    # z = sigmoid(30 + ...) rounds to 1: every layer keeps its state exactly, whatever the input
    state = torch.randn(3, *core.state_shape)
    x = 10 * torch.randn(10, 3, 4)
    no_starts = torch.zeros(10, 3)
    _, after = _stepwise(core, x, state, no_starts)
    torch.testing.assert_close(after, state, atol=1e-6, rtol=0)
    _, seq_after = core.forward_sequence(x, state, no_starts)
    torch.testing.assert_close(seq_after, state, atol=1e-6, rtol=0)
    # at the other extreme z rounds to 0 and the new state is the candidate n alone (torch's gate order r, z, n)
    core = make_core("gru", 4, H, 1, kernel=kernel, update_bias=-30.0)
    h, x0 = state[:, 0], x[0] / 10
    w_ih, w_hh, b_ih, b_hh = core.rnn.weight_ih_l0, core.rnn.weight_hh_l0, core.rnn.bias_ih_l0, core.rnn.bias_hh_l0
    gi, gh = x0 @ w_ih.T + b_ih, h @ w_hh.T + b_hh
    r = torch.sigmoid(gi[:, :H] + gh[:, :H])
    n = torch.tanh(gi[:, 2 * H:] + r * gh[:, 2 * H:])
    _, after = core.forward_sequence(x0[None], state[:, :1], no_starts[:1])
    torch.testing.assert_close(after[:, 0], n, atol=1e-5, rtol=0)


@pytest.mark.parametrize("core, option", [("lstm", "forget_bias"), ("gru", "update_bias")])
def test_gate_bias_must_be_finite(core, option):
    for bad in (float("nan"), float("inf"), "big", "2", True, [1.0]):
        with pytest.raises(ValueError, match="expected a finite number") as info:
            make_core(core, 4, 6, **{option: bad})
        assert str(info.value) == f"{option}={bad!r}: expected a finite number"
    assert make_core(core, 4, 6, **{option: 2}).rnn.bias_ih_l0[6] == 2.0  # an int is a number


@pytest.mark.parametrize("name", ["gru", "lstm"])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_recurrent_dropout_with_a_mask_of_ones_is_the_plain_core(name, num_layers):
    """The masked step loop (the recurrent-dropout path) computes the same cell as the kernels: all-ones masks
    give the plain core's outputs, states and gradients over a sequence with resets."""
    core = make_core(name, 6, 8, num_layers, recurrent_dropout=0.5)
    x, starts, state0 = _inputs(core)
    ones = torch.ones(num_layers, x.shape[1], 8)
    core.eval()  # eval mode: forward_sequence does not drop
    plain = _grads(core, lambda: core.forward_sequence(x, state0, starts))
    masked = _grads(core, lambda: core.masked_sequence(x, state0, starts, ones))
    y_plain, s_plain = core.forward_sequence(x, state0, starts)
    y_mask, s_mask = core.masked_sequence(x, state0, starts, ones)
    torch.testing.assert_close(y_mask, y_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(s_mask, s_plain, atol=1e-5, rtol=1e-5)
    for a, b in zip(masked, plain):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["gru", "lstm"])
def test_recurrent_dropout_draws_one_mask_per_sequence_in_training_only(name):
    torch.manual_seed(0)
    p, H = 0.25, 64
    core = make_core(name, 6, H, 1, recurrent_dropout=p)
    x, starts, state0 = _inputs(core, T=12, B=50)
    core.train()
    torch.manual_seed(5)
    y, s = core.forward_sequence(x, state0, starts)
    torch.manual_seed(5)
    masks = core.recurrent_masks(50)  # the same draw: one [B, H] mask for every step of the sequence
    y_ref, s_ref = core.masked_sequence(x, state0, starts, masks)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(s, s_ref)
    values = masks.unique()
    assert values[0] == 0.0 and values[1:].tolist() == pytest.approx([1.0 / (1.0 - p)]) and len(values) == 2
    assert abs((masks == 0).float().mean().item() - p) < 0.03
    ones = torch.ones_like(masks)
    assert not torch.allclose(y, core.masked_sequence(x, state0, starts, ones)[0])  # it really drops
    core.eval()  # evaluation and acting never drop
    y_eval, _ = core.forward_sequence(x, state0, starts)
    torch.testing.assert_close(y_eval, core.masked_sequence(x, state0, starts, ones)[0], atol=1e-5, rtol=1e-5)
    y_step, _ = _stepwise(core.train(), x, state0, starts)
    torch.testing.assert_close(y_step, y_eval, atol=1e-5, rtol=1e-5)


def test_recurrent_dropout_must_be_a_probability():
    for bad in (-0.1, 1.0, float("nan"), "0.2", True):
        with pytest.raises(ValueError, match="expected a probability in \\[0, 1\\)"):
            make_core("gru", 4, 6, recurrent_dropout=bad)


@pytest.mark.parametrize("name, keep, shut", [("lstm", 1, 0), ("gru", 1, None)])
@pytest.mark.parametrize("num_layers", [1, 2])
def test_chrono_spreads_forgetting_times_up_to_t_max(name, keep, shut, num_layers):
    """Chrono init: the keep gate's bias is log(u), u ~ U(1, t_max - 1) per unit (so each unit forgets over about
    1 + u steps), the LSTM's input gate starts at -log(u), bias_hh is 0 in those blocks, the other blocks keep
    torch's init; and the state then decays at those rates."""
    H, t_max = 512, 200
    torch.manual_seed(0)
    core = make_core(name, 4, H, num_layers, chrono=t_max)
    bound = H ** -0.5
    for k in range(num_layers):
        b_ih, b_hh = getattr(core.rnn, f"bias_ih_l{k}"), getattr(core.rnn, f"bias_hh_l{k}")
        u = b_ih[keep * H:(keep + 1) * H].exp()
        assert u.min() >= 1.0 - 1e-4 and u.max() <= t_max - 1 + 1e-3
        assert u.max() > 0.95 * t_max and u.min() < 0.05 * t_max  # the whole range is covered
        assert abs(u.mean().item() - t_max / 2) < 0.1 * t_max  # uniform: mean (1 + t_max - 1) / 2
        assert torch.all(b_hh[keep * H:(keep + 1) * H] == 0.0)
        if shut is not None:
            torch.testing.assert_close(b_ih[shut * H:(shut + 1) * H], -b_ih[keep * H:(keep + 1) * H])
            assert torch.all(b_hh[shut * H:(shut + 1) * H] == 0.0)
        other = [b for b in range(b_ih.numel() // H) if b not in (keep, shut)]
        assert all(b_ih[b * H:(b + 1) * H].abs().max() <= bound for b in other)
    # an independent draw with another seed differs (the biases are random per unit, not a fixed ladder)
    torch.manual_seed(1)
    assert not torch.equal(make_core(name, 4, H, num_layers, chrono=t_max).rnn.bias_ih_l0, core.rnn.bias_ih_l0)
    # slow units keep more of a state than fast ones: with zero weights the keep fraction is exactly u / (1 + u)
    if name == "gru":
        with torch.no_grad():
            for p in core.rnn.parameters():
                if p.dim() == 2:
                    p.zero_()
            core.rnn.bias_ih_l0[2 * H:].zero_()
            core.rnn.bias_hh_l0[2 * H:].zero_()
        h0 = torch.ones(1, *core.state_shape)
        _, h = core.forward_sequence(torch.zeros(10, 1, 4), h0, torch.zeros(10, 1))
        u = core.rnn.bias_ih_l0[H:2 * H].exp()
        torch.testing.assert_close(h[0, 0], (u / (1 + u)) ** 10, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name, other", [("lstm", "forget_bias"), ("gru", "update_bias")])
def test_chrono_bad_values_and_conflicts(name, other):
    for bad in (2, 0, -5, 10.0, "100", True, None.__class__):
        with pytest.raises(ValueError) as info:
            make_core(name, 4, 6, chrono=bad)
        assert str(info.value) == (f"chrono={bad!r}: expected an integer >= 3 (the longest time scale to start with, "
                                   "in steps)")
    with pytest.raises(ValueError, match=f"{other}=1.0 and chrono=50: expected at most one of them"):
        make_core(name, 4, 6, chrono=50, **{other: 1.0})
