"""Rollout videos of the locomotion families before and after adaptation (MuJoCo offscreen).

MuJoCo renders offscreen through EGL (``MUJOCO_GL=egl``; Debian/Ubuntu package ``libegl1``,
with a GPU driver or Mesa) or OSMesa (``MUJOCO_GL=osmesa``; package ``libosmesa6``, CPU only).
``MUJOCO_GL`` must be set before ``mujoco`` is imported; :func:`configure_gl` picks a working
backend for the command line. Without a renderer, :func:`write_videos` returns a message and
writes nothing. Videos are MP4 when imageio's ffmpeg plugin (``imageio-ffmpeg``) is installed,
GIF otherwise.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from maml_rl.policy import is_task_batched

if TYPE_CHECKING:
    from maml_rl.family import ActionMapping, TaskFamily
    from maml_rl.policy import Params
    from maml_rl.report import EvaluationReport, MethodResult

GL_BACKENDS = ("egl", "osmesa")
INSTALL_HINT = (
    "install an offscreen OpenGL library and select it: `apt-get install libegl1` with "
    "MUJOCO_GL=egl, or `apt-get install libosmesa6` with MUJOCO_GL=osmesa"
)
_PROBE = (
    "import mujoco\n"
    'm = mujoco.MjModel.from_xml_string(\'<mujoco><worldbody><geom size="1"/></worldbody>'
    "</mujoco>')\n"
    "r = mujoco.Renderer(m, 16, 16); d = mujoco.MjData(m); r.update_scene(d); r.render()\n"
    "r.close()\n"
)


def probe_gl(backend: str, timeout: float = 60.0) -> bool:
    """Whether MuJoCo can render offscreen with ``MUJOCO_GL=backend`` (tried in a subprocess)."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def configure_gl() -> str | None:
    """Set ``MUJOCO_GL`` to the first working offscreen backend (egl, then osmesa) unless the
    user set it; call before ``mujoco`` is imported. Returns the backend, or None."""
    if os.environ.get("MUJOCO_GL"):
        return os.environ["MUJOCO_GL"]
    if "mujoco" in sys.modules:
        return None  # too late to choose; rendering will be tried as is
    for backend in GL_BACKENDS:
        if probe_gl(backend):
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return backend
    return None


def video_format() -> str:
    """``mp4`` when imageio's ffmpeg plugin is importable, else ``gif``."""
    return "mp4" if importlib.util.find_spec("imageio_ffmpeg") is not None else "gif"


def make_render_env(family: TaskFamily, width: int, height: int) -> Any:
    """A single env of the family rendering ``rgb_array`` frames."""
    env = family.make_env(render_mode="rgb_array", width=width, height=height)
    use_tracking_camera(env)
    return env


def use_tracking_camera(env: Any) -> None:
    """Render a MuJoCo env through its model's ``track`` camera (``trackcom`` mode), if any.

    Gymnasium's half-cheetah and ant models define it, but their renderer uses a free camera
    that stays in place, which a running policy leaves within seconds. Other envs are left as
    they are.
    """
    import mujoco

    renderer = getattr(env.unwrapped, "mujoco_renderer", None)
    if renderer is None:
        return
    camera = mujoco.mj_name2id(renderer.model, mujoco.mjtObj.mjOBJ_CAMERA, "track")
    if camera >= 0:
        renderer.camera_id = camera


def _task_params(params: Params, index: int) -> Params:
    if is_task_batched(params):
        return {k: v[index] for k, v in params.items()}
    return params


def rollout_frames(
    env: Any,
    policy: Any,
    params: Params,
    task: Any,
    seed: int,
    to_env: ActionMapping,
    every: int = 2,
) -> tuple[list[np.ndarray], float]:
    """Frames of one episode with the policy's most likely action (the Gaussian's mean, the
    categorical's argmax), mapped onto the action space as in training (``to_env``), every
    ``every``-th step, and its return."""
    obs, _ = env.reset(seed=seed, options={"task": task})
    frames, total, t = [env.render()], 0.0, 0
    done = False
    with torch.no_grad():
        while not done:
            output = policy(torch.as_tensor(obs, dtype=torch.float32), params)
            action = to_env(policy.distribution.mode(output).numpy())
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
            t += 1
            if t % every == 0 or done:
                frames.append(env.render())
    return frames, total


def _label(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 0, 8 + 7 * len(text), 18], fill=(0, 0, 0))
    draw.text((4, 3), text, fill=(255, 255, 255))
    return np.asarray(image)


def _side_by_side(left: list[np.ndarray], right: list[np.ndarray]) -> list[np.ndarray]:
    n = max(len(left), len(right))
    pad = lambda frames, i: frames[min(i, len(frames) - 1)]  # noqa: E731 (hold the last frame)
    return [np.concatenate([pad(left, i), pad(right, i)], axis=1) for i in range(n)]


def write_videos(
    report: EvaluationReport,
    result: MethodResult,
    family: TaskFamily,
    out_dir: str | Path,
    num_tasks: int = 2,
    width: int = 320,
    height: int = 240,
) -> tuple[list[Path], str]:
    """One video per test task (the first ``num_tasks``): left the pre-update policy, right the
    policy after the last adaptation step, both run with their mean actions.

    Returns the written paths and a message (the reason when nothing was written).
    """
    import imageio.v3 as iio

    if "rgb_array" not in family.render_modes:
        where = " (its paths are in trajectories.png)" if family.plots_paths else ""
        return [], (
            f"video: skipped, {report.env_id} renders no frames (no rgb_array render mode){where}"
        )
    if result.policy is None or not result.params:
        return [], f"video: skipped, {result.label} has no adapted parameters to replay"
    try:
        env = make_render_env(family, width, height)
        env.reset(seed=0)
        env.render()
    except Exception as err:  # any GL/driver failure means: no renderer here
        backend = os.environ.get("MUJOCO_GL", "unset")
        return [], (
            f"video: skipped, no MuJoCo offscreen renderer (MUJOCO_GL={backend}: "
            f"{type(err).__name__}: {err}); {INSTALL_HINT}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fmt = video_format()
    fps = max(1, round(1.0 / (2 * env.unwrapped.dt)))  # every 2nd step: real time
    to_env = family.action_mapping(env.action_space)
    before, after = result.params[0], result.params[-1]
    steps = len(result.params) - 1
    written: list[Path] = []
    try:
        for i in range(min(num_tasks, len(report.tasks))):
            task = report.tasks[i]
            seed = 1000 + i
            pre, pre_return = rollout_frames(
                env, result.policy, _task_params(before, i), task, seed, to_env
            )
            post, post_return = rollout_frames(
                env, result.policy, _task_params(after, i), task, seed, to_env
            )
            pre = [_label(f, f"pre-update  return {pre_return:.1f}") for f in pre]
            after_text = f"after {steps} step{'s' if steps != 1 else ''}"
            post = [_label(f, f"{after_text}  return {post_return:.1f}") for f in post]
            name = "_".join(f"{x:g}" for x in np.asarray(task.as_array()))
            path = out / f"task{i}_{name}.{fmt}"
            frames = np.stack(_side_by_side(pre, post))
            if fmt == "gif":
                iio.imwrite(path, frames, duration=1000 / fps, loop=0)
            else:
                iio.imwrite(path, frames, fps=fps)
            written.append(path)
    finally:
        env.close()
    return written, f"video: wrote {len(written)} {fmt} file(s) to {out}"
