"""A core of the user's own, defined here and nowhere else, trained through ``train_agent --core module:Class``."""

import json

import torch
from torch import nn

from agents import load_policy
from agents.cli import main
from agents.cores import MemoryCore, core_options

torch.set_num_threads(1)


class LeakyCore(MemoryCore):
    """A leaky integrator, ``h_t = leak * h_{t-1} + tanh(W x_t)``: the smallest core with a memory, and an option
    (``leak``) that has no default, so a run must pass it."""

    name = "leaky"

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, *, leak: float) -> None:
        super().__init__(input_size, hidden_size, num_layers)
        if not 0.0 <= float(leak) < 1.0:
            raise ValueError(f"leak={leak!r}: expected a number in [0, 1)")
        self.leak = float(leak)
        self.proj = nn.Linear(input_size, hidden_size)

    @property
    def state_shape(self):
        return (self.hidden_size,)

    def _step(self, x, state):
        h = self.leak * state + torch.tanh(self.proj(x))
        return h, h

    def _sequence(self, x, state):
        ys = []
        for t in range(x.shape[0]):
            y, state = self._step(x[t], state)
            ys.append(y)
        return torch.stack(ys), state


NAME = f"{__name__}:LeakyCore"


def test_user_core_keeps_the_recurrent_contract():
    core = LeakyCore(4, 6, leak=0.5)
    torch.manual_seed(0)
    x, starts = torch.randn(9, 3, 4), torch.rand(9, 3) < 0.3
    state0 = torch.randn(3, 6)
    y_seq, s_seq = core.forward_sequence(x, state0, starts)
    state, ys = state0, []
    for t in range(9):
        y, state = core.step(x[t], state, starts[t])
        ys.append(y)
    torch.testing.assert_close(y_seq, torch.stack(ys))
    torch.testing.assert_close(s_seq, state)
    assert list(core_options(NAME)) == ["leak"]


def test_train_agent_trains_and_saves_a_user_core(tmp_path, capsys):
    argv = ["--core", NAME, "--core-kwargs", "leak=0.75", "--env", "CartPole-P-v1", "--total-timesteps", "384",
            "--n-envs", "2", "--logdir", str(tmp_path), "--no-progress", "--set", "n_steps=64", "batch_size=64",
            "n_epochs=1", "eval_episodes=2", "latency_steps=20", "hidden_size=8"]
    assert main(argv) == 0, capsys.readouterr().err
    (run_dir,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert run_dir.name.startswith("CartPole-P-v1__LeakyCore__s0__")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["core"] == NAME and summary["core_kwargs"] == {"leak": 0.75}
    assert summary["total_timesteps"] == 384
    policy = load_policy(run_dir / "model.zip")
    assert isinstance(policy.core_pi, LeakyCore) and policy.core_pi.leak == 0.75
    assert policy.core_name == NAME and policy.core_kwargs == {"leak": 0.75}
    state = policy.initial_state(1)
    action, state = policy.act([0.0, 0.1], state, episode_start=True)
    assert action in (0, 1) and state.shape == (1, 2 * 8)  # the actor's and the critic's leaky state


def test_a_user_core_needs_its_required_option(tmp_path, capsys):
    code = main(["--core", NAME, "--env", "CartPole-P-v1", "--logdir", str(tmp_path), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "needs option 'leak'" in err and len(err.strip().splitlines()) == 1
