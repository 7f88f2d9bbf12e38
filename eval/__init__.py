"""robopolicy.eval: evaluation suites, their runner and reports.

Installed from the top-level eval/ folder under the robopolicy namespace; it holds no suites yet.
"""
