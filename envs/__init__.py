"""Meta-RL task families for MAML (Finn, Abbeel, Levine, ICML 2017) on Gymnasium and MuJoCo.

Importing this package registers the ``MAML/`` environments (single and batched):

==========================  ==========================================  =======
id                          task distribution                           horizon
==========================  ==========================================  =======
``MAML/Navigation2D-v0``    goal uniform in [-0.5, 0.5]^2                 100
``MAML/HalfCheetahVel-v0``  goal velocity uniform in [0, 2]               200
``MAML/HalfCheetahDir-v0``  direction in {-1, +1}                         200
``MAML/AntVel-v0``          goal velocity uniform in [0, 3]               200
``MAML/AntDir-v0``          direction in {-1, +1}                         200
``MAML/AntGoal-v0``         goal position uniform in [-3, 3]^2            200
==========================  ==========================================  =======

Discrete-action families (RL^2: Duan et al. 2016; ``Discrete`` action spaces):

===============================  ============================================  =======
id                               task distribution                             horizon
===============================  ============================================  =======
``MAML/BernoulliBandit-K5-v0``   5 arm probabilities uniform in [0, 1)               1
``MAML/BernoulliBandit-K10-v0``  10 arm probabilities uniform in [0, 1)              1
``MAML/BernoulliBandit-K50-v0``  50 arm probabilities uniform in [0, 1)              1
``MAML/TabularMDP-v0``           10 states, 5 actions; mean rewards N(1, 1),        10
                                 transitions Dirichlet(1, ..., 1)
===============================  ============================================  =======

Each locomotion family also comes as the authors' exact task (rllab's envs, as run by
cbfinn/maml_rl: one physics step per env step, centre-of-mass velocity, rllab's observations,
reset noise and ant model; :mod:`maml_envs.rllab_locomotion`): ``MAML/HalfCheetahVel-rllab-v0``,
``MAML/HalfCheetahDir-rllab-v0``, ``MAML/AntVel-rllab-v0``, ``MAML/AntDir-rllab-v0``,
``MAML/AntGoal-rllab-v0`` (horizon 200).

Meta-World's meta-learning benchmarks (Yu et al., CoRL 2019; :mod:`maml_envs.meta_world`, which
needs the optional ``metaworld`` package: docs/metaworld.md), goal hidden, horizon 500,
``info["success"]``: ``MAML/MetaWorld-ML1-<task>-v0`` for each of the 50 v3 tasks (``<task>``
without ``-v3``, e.g. ``MAML/MetaWorld-ML1-push-v0``), ``MAML/MetaWorld-ML10-v0`` and
``MAML/MetaWorld-ML45-v0``. Registering them imports nothing of ``metaworld``.

This package (the folder ``envs/``) installs under the import name ``maml_envs``, which no
user project's own ``envs`` package can shadow. It depends on gymnasium, mujoco and numpy only
(and on ``metaworld`` for the Meta-World ids).
"""

from gymnasium import register

from maml_envs.task_family import SplitTaskSpace, TaskFamilyEnv, TaskFamilyVectorEnv, TaskSpace
from maml_envs.tasks import (
    BernoulliArms,
    BernoulliBanditTaskSpace,
    Direction,
    DirectionTaskSpace,
    GoalPosition,
    GoalPositionTaskSpace,
    GoalVelocity,
    TabularMDP,
    TabularMDPTaskSpace,
    VelocityTaskSpace,
)

__all__ = [
    "BernoulliArms",
    "BernoulliBanditTaskSpace",
    "Direction",
    "DirectionTaskSpace",
    "GoalPosition",
    "GoalPositionTaskSpace",
    "GoalVelocity",
    "SplitTaskSpace",
    "TabularMDP",
    "TabularMDPTaskSpace",
    "TaskFamilyEnv",
    "TaskFamilyVectorEnv",
    "TaskSpace",
    "VelocityTaskSpace",
]

_FAMILIES = [
    ("Navigation2D", "navigation", "Navigation2D", 100, {"low": -0.5, "high": 0.5}),
    ("HalfCheetahVel", "half_cheetah", "HalfCheetahVel", 200, {"low": 0.0, "high": 2.0}),
    ("HalfCheetahDir", "half_cheetah", "HalfCheetahDir", 200, {}),
    ("AntVel", "ant", "AntVel", 200, {"low": 0.0, "high": 3.0}),
    ("AntDir", "ant", "AntDir", 200, {}),
    ("AntGoal", "ant", "AntGoal", 200, {"low": -3.0, "high": 3.0}),
]

# discrete actions (RL^2, Duan et al. 2016, as tristandeleu/pytorch-maml-rl registers them):
# K-armed Bernoulli bandits, one pull per episode; random tabular MDPs, S = 10, A = 5
_FAMILIES += [
    (f"BernoulliBandit-K{k}", "bandit", "BernoulliBandit", 1, {"k": k}) for k in (5, 10, 50)
]
_FAMILIES.append(
    ("TabularMDP", "tabular_mdp", "TabularMDP", 10, {"num_states": 10, "num_actions": 5})
)

_RLLAB_FAMILIES = [
    ("HalfCheetahVel", {"low": 0.0, "high": 2.0}),
    ("HalfCheetahDir", {}),
    ("AntVel", {"low": 0.0, "high": 3.0}),
    ("AntDir", {}),
    ("AntGoal", {"low": -3.0, "high": 3.0}),
]
_FAMILIES += [
    (f"{name}-rllab", "rllab_locomotion", f"{name}Rllab", 200, kwargs)
    for name, kwargs in _RLLAB_FAMILIES
]

for _name, _module, _cls, _horizon, _kwargs in _FAMILIES:
    register(
        id=f"MAML/{_name}-v0",
        entry_point=f"maml_envs.{_module}:{_cls}Env",
        vector_entry_point=f"maml_envs.{_module}:{_cls}VectorEnv",
        max_episode_steps=_horizon,
        kwargs=_kwargs,
    )

# Meta-World (the optional metaworld package; maml_envs.meta_world imports it when an env is made)
METAWORLD_TASKS = (
    "assembly", "basketball", "bin-picking", "box-close", "button-press-topdown",
    "button-press-topdown-wall", "button-press", "button-press-wall", "coffee-button",
    "coffee-pull", "coffee-push", "dial-turn", "disassemble", "door-close", "door-lock",
    "door-open", "door-unlock", "hand-insert", "drawer-close", "drawer-open", "faucet-open",
    "faucet-close", "hammer", "handle-press-side", "handle-press", "handle-pull-side",
    "handle-pull", "lever-pull", "pick-place-wall", "pick-out-of-hole", "pick-place",
    "plate-slide", "plate-slide-side", "plate-slide-back", "plate-slide-back-side",
    "peg-insert-side", "peg-unplug-side", "soccer", "stick-push", "stick-pull", "push",
    "push-wall", "push-back", "reach", "reach-wall", "shelf-place", "sweep-into", "sweep",
    "window-open", "window-close",
)  # fmt: skip
"""The 50 Meta-World v3 tasks (``<name>-v3`` in metaworld), in metaworld's order."""

_METAWORLD = [
    (f"ML1-{name}", {"benchmark": "ML1", "task_name": f"{name}-v3"}) for name in METAWORLD_TASKS
]
_METAWORLD += [(name, {"benchmark": name, "task_name": None}) for name in ("ML10", "ML45")]
for _name, _kwargs in _METAWORLD:
    register(
        id=f"MAML/MetaWorld-{_name}-v0",
        entry_point="maml_envs.meta_world:MetaWorldEnv",
        vector_entry_point="maml_envs.meta_world:MetaWorldVectorEnv",
        max_episode_steps=500,
        kwargs=_kwargs,
    )
