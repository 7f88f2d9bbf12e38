"""robopolicy.eval: evaluation suites, their runner and reports (`robopolicy eval`, `robopolicy report`).

Installed from the top-level eval/ folder under the robopolicy namespace: suites/ (YAML), suite.py,
rollout.py (the episode loop), workers.py (env worker processes), runner.py (records, resume, shards),
report.py and video.py (summaries, charts, mp4s), stats.py (Wilson intervals).
"""
