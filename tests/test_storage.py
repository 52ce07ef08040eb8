"""Storage helpers: the git commit stamped on results, atomic writes."""
import os
import stat
import subprocess

from interpbench.storage import atomic_write_text, git_commit


def test_git_commit_is_dirty_for_code_changes_but_not_for_results(tmp_path):
    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    assert git_commit(tmp_path) == "unknown"  # not a repository
    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "leaderboard.md").write_text("old\n")
    (tmp_path / "model.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    assert git_commit(tmp_path) == head
    (tmp_path / "results" / "leaderboard.md").write_text("new\n")  # a sweep rewrote its leaderboard
    assert git_commit(tmp_path) == head
    (tmp_path / "model.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == head + "-dirty"


def test_atomic_writes_get_the_mode_a_plain_write_gets(tmp_path):
    plain = tmp_path / "plain.txt"
    plain.write_text("a\n")
    atomic = atomic_write_text(tmp_path / "atomic.txt", "a\n")
    mode = stat.S_IMODE(os.stat(atomic).st_mode)
    assert mode == stat.S_IMODE(os.stat(plain).st_mode), oct(mode)
    assert atomic.read_text() == "a\n" and [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
