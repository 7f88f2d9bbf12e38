"""Writer subprocess for test_crash.py: appends the deterministic episodes [n_episodes, N) to a store.

    python crash_writer.py STORE N [--pause-before-commit K MARKER]

Prints "ready" once imports are done. With --pause-before-commit, episode K's data is written and the
writer then waits forever before committing it (after creating MARKER), to be killed there.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from conftest import make_episode  # noqa: E402
from robopolicy.data.store import DemoStore  # noqa: E402


def main() -> None:
    path, n_total = Path(sys.argv[1]), int(sys.argv[2])
    if "--pause-before-commit" in sys.argv:
        k, marker = int(sys.argv[-2]), Path(sys.argv[-1])

        def pause(index: int) -> None:
            if index == k:
                marker.write_text("paused")
                while True:
                    time.sleep(1)

        DemoStore._before_commit = pause
    store = DemoStore.open(path, mode="a") if path.exists() else DemoStore.create(path, fps=10)
    print("ready", flush=True)
    with store:
        for i in range(store.n_episodes, n_total):
            store.append_episode(make_episode(i))
    print("done", flush=True)


if __name__ == "__main__":
    main()
