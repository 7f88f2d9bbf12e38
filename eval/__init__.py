"""robopolicy.eval: evaluation suites, their runner and reports.

Installed from the top-level eval/ folder under the robopolicy namespace: rollout.py (a minimal closed-loop
rollout) and stats.py (Wilson intervals); no suites yet.
"""
