"""The learner on CUDA equals the learner on the CPU (skipped where no GPU is present)."""

import copy

import pytest
import torch

from maml_rl.meta_optimizers import make_meta_optimizer
from maml_rl.policy import GaussianMLPPolicy
from maml_rl.settings import MetaLearnerSettings
from tests.conftest import random_loss_inputs

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("hvp", ["gauss_newton", "exact"])
def test_meta_step_on_cuda_equals_cpu(hvp):
    torch.manual_seed(0)
    policy = GaussianMLPPolicy(3, 2, (8, 8), "relu").double()
    inner = [random_loss_inputs(4, 30, 3, 2, seed=1)]
    valid = random_loss_inputs(4, 30, 3, 2, seed=2)
    cpu, gpu = policy, copy.deepcopy(policy).cuda()
    settings = MetaLearnerSettings(inner_lr=0.3, hvp=hvp)
    res_cpu = make_meta_optimizer(cpu, settings, 1).step(inner, valid)
    res_gpu = make_meta_optimizer(gpu, settings, 1).step(
        [d.to("cuda") for d in inner], valid.to("cuda")
    )
    assert res_cpu.accepted and res_gpu.accepted
    assert res_gpu.step_fraction == res_cpu.step_fraction
    for a, b in zip(cpu.parameters(), gpu.parameters()):
        torch.testing.assert_close(a, b.cpu(), rtol=1e-9, atol=1e-11)


def test_training_runs_on_cuda(tmp_path):
    from maml_rl.checkpoint import load_checkpoint
    from maml_rl.config import TrainConfig
    from maml_rl.evaluation import random_policy
    from maml_rl.run import train

    def config(device):
        return TrainConfig(
            meta_batch_size=4,
            episodes_per_task=4,
            hidden_sizes=[16, 16],
            num_iterations=2,
            progress_bar=False,
            device=device,
        ).validate()

    import csv

    gpu_dir = train(config("cuda"), tmp_path / "gpu", stdout=False)
    cpu_dir = train(config("cpu"), tmp_path / "cpu", stdout=False)
    gpu, cpu = load_checkpoint(gpu_dir), load_checkpoint(cpu_dir)
    initial = random_policy(config("cpu")).state_dict()
    assert gpu["iteration"] == 2
    for k in cpu["policy"]:
        assert gpu["policy"][k].device.type == "cpu"  # checkpoints are device-independent
    # the GPU run trained: its weights left the initialisation both runs start from
    assert any(not torch.equal(gpu["policy"][k], initial[k]) for k in initial)
    rows = [list(csv.DictReader(open(d / "progress.csv"))) for d in (gpu_dir, cpu_dir)]
    # the first batch is sampled on the CPU from the same initial policy: identical returns
    key = "rollout/pre_return_mean"
    assert rows[0][0][key] == rows[1][0][key]
    post = "rollout/post_return_mean"
    assert float(rows[0][0][post]) == pytest.approx(float(rows[1][0][post]), rel=1e-3)


def test_adapting_a_cuda_policy_leaves_it_on_the_gpu():
    """Test-time adaptation runs on a CPU copy; the caller's policy is not moved."""
    from maml_rl.api import adapt
    from maml_rl.config import TrainConfig
    from maml_rl.evaluation import random_policy
    from maml_rl.family import TaskFamily

    config = TrainConfig(episodes_per_task=2, hidden_sizes=[8], progress_bar=False).validate()
    policy = random_policy(config).cuda()
    task = TaskFamily.from_config(config).test_tasks(1, seed=0)[0]
    adapt(policy, config, task, num_steps=1)
    assert all(p.device.type == "cuda" for p in policy.parameters())
