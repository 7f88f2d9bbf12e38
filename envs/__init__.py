"""robopolicy.envs: MuJoCo tasks with scripted experts (Meta-World, history-dependent tasks, robosuite Lift).

Installed from the top-level envs/ folder under the robopolicy namespace. The task suite lands with the
task-suite issue; until then this package holds no tasks.
"""
