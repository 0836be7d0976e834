"""maml-rl: Model-Agnostic Meta-Learning for reinforcement learning."""

__version__ = "0.1.0"
