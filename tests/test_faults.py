"""Fault injection: crafted and damaged files must not run code, and fail in one line.

A pickled payload that creates a marker file when unpickled is planted in model files; loading them must leave the
marker absent (no code ran) and either load from plain data or refuse in one line.
"""

import base64
import json
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.utils import LinearSchedule

import envs
from agents import RecurrentPPO, load_policy
from agents.serialization import UnsafeModelFile

torch.set_num_threads(1)


class _Payload:
    """Unpickling this creates ``marker``: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _serialized(marker: Path, type_name: str) -> dict:
    return {":type:": type_name, ":serialized:": base64.b64encode(pickle.dumps(_Payload(marker))).decode()}


def _rewrite_data(src: Path, dst: Path, edit) -> None:
    """Copy a model zip, passing its ``data`` JSON through ``edit``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            payload = zin.read(name)
            if name == "data":
                data = json.loads(payload)
                edit(data)
                payload = json.dumps(data).encode()
            zout.writestr(name, payload)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    env = make_vec_env(lambda: envs.make_env("CartPole-P-v1"), n_envs=2, seed=0)
    model = RecurrentPPO("MlpPolicy", env, core="lstm", hidden_size=8, n_steps=16, batch_size=32, n_epochs=1, seed=0,
                         learning_rate=LinearSchedule(1e-3, 0.0, 1.0), ent_coef=LinearSchedule(0.02, 0.0, 1.0),
                         clip_range_vf=0.3)
    model.learn(96)
    path = tmp_path_factory.mktemp("model") / "model.zip"
    model.save(path)
    return path, model


def test_every_pickled_field_is_rebuilt_from_plain_data(saved, tmp_path):
    """Each field SB3 pickles carries a payload; the model still loads (from the plain numbers beside each pickle
    and recurrent_policy.json), no payload runs, and the loaded model matches the saved one."""
    path, model = saved
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.zip"

    def plant(data):
        for key, item in data.items():
            if isinstance(item, dict) and ":serialized:" in item:
                item[":serialized:"] = _serialized(marker, item[":type:"])[":serialized:"]

    _rewrite_data(path, evil, plant)
    loaded = RecurrentPPO.load(evil)
    assert not marker.exists()
    assert loaded.learning_rate(0.5) == pytest.approx(5e-4) and loaded.ent_coef(0.25) == pytest.approx(0.005)
    assert loaded.clip_range(1.0) == pytest.approx(0.2) and loaded.clip_range_vf(1.0) == pytest.approx(0.3)
    assert loaded.observation_space == model.observation_space and loaded.action_space == model.action_space
    assert [e["r"] for e in loaded.ep_info_buffer] == [e["r"] for e in model.ep_info_buffer]
    for a, b in zip(loaded.policy.state_dict().values(), model.policy.state_dict().values()):
        torch.testing.assert_close(a, b)
    obs = np.array([[0.1, -0.2]], dtype=np.float32)
    assert loaded.predict(obs, deterministic=True)[0] == model.predict(obs, deterministic=True)[0]
    load_policy(evil)
    assert not marker.exists()


@pytest.mark.parametrize("key, type_name", [("evil", "<class 'builtins.object'>"),
                                            ("learning_rate", "<class 'builtins.function'>"),
                                            ("clip_range", "<class 'stable_baselines3.common.utils.FloatSchedule'>")])
def test_a_field_only_a_pickle_could_restore_is_refused_in_one_line(saved, tmp_path, key, type_name):
    path, _ = saved
    marker = tmp_path / "ran"
    evil = tmp_path / "evil.zip"

    def plant(data):
        data[key] = _serialized(marker, type_name)  # no plain numbers beside it
        if key == "clip_range":
            data[key]["value_schedule"] = "<function <lambda> at 0x7f>"

    _rewrite_data(path, evil, plant)
    with pytest.raises(UnsafeModelFile) as info:
        RecurrentPPO.load(evil)
    message = str(info.value)
    assert "\n" not in message and key in message and "trust_file=True" in message
    assert not marker.exists()
    # the explicit opt-in does what it says: SB3 unpickles the field
    if key == "evil":
        RecurrentPPO.load(evil, trust_file=True)
        assert marker.exists()
