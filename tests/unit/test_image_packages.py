"""Images with packages, the pure parts: the package name rule, profiles, the base recipe's cache key, reading
apt-get's output, the default image size, and the debugfs commands that put the agent into a saved drive."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from nexus.domain.errors import Invalid
from nexus.domain.packages import MAX_PACKAGES, PROFILES, check_package, expand_packages
from nexus.images import aptlayer, bases, ext4edit
from nexus.images.builder import default_size_mib

MIRROR = "http://deb.debian.org/debian"


@pytest.mark.parametrize(
    "name", ["git", "g++", "libstdc++6", "python3.11", "python3-pip", "build-essential", "xz-utils", "0ad"]
)
def test_debian_names_are_taken(name: str) -> None:
    assert check_package(name) == name


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("git=1:2.39.5-0+deb12u2", "version pins"),
        ("a", "invalid package name"),
        ("Git", "invalid package name"),
        ("-git", "invalid package name"),
        ("git-", "invalid package name"),  # apt would read "remove git"
        ("git.", "invalid package name"),
        ("git pip", "invalid package name"),
        ("git/bookworm", "invalid package name"),
        ("git;rm", "invalid package name"),
        ("g" * 101, "invalid package name"),
    ],
)
def test_other_names_are_refused(name: str, why: str) -> None:
    with pytest.raises(Invalid, match=why):
        check_package(name)


def test_profiles_and_packages_combine_sorted_without_duplicates() -> None:
    dev = PROFILES["dev"]
    assert {"git", "build-essential", "python3-pip", "python3-venv", "ca-certificates"} <= set(dev)
    assert expand_packages([], []) == ()
    assert expand_packages([], ["zsh", "git", "git"]) == ("git", "zsh")
    combined = expand_packages(["dev"], ["git", "zsh"])
    assert combined == tuple(sorted({*dev, "zsh"}))
    assert expand_packages(["dev", "dev"], []) == tuple(sorted(dev))


def test_unknown_profiles_bad_names_and_too_many_are_refused() -> None:
    with pytest.raises(Invalid, match="unknown profile 'gpu'; known: dev"):
        expand_packages(["gpu"], [])
    with pytest.raises(Invalid, match="invalid package name 'Bad'"):
        expand_packages(["dev"], ["Bad"])
    with pytest.raises(Invalid, match=f"at most {MAX_PACKAGES}"):
        expand_packages([], [f"pkg{i}" for i in range(MAX_PACKAGES + 1)])


def test_the_plain_recipe_keeps_its_key_and_packages_change_it() -> None:
    include = bases.DEBIAN_SUITES["bookworm"]
    plain = bases.DebootstrapRecipe("bookworm", MIRROR, include)
    # the key every cached base had before packages existed: a plain base stays cached across this change
    before = hashlib.sha256("\n".join(("1", "bookworm", MIRROR, "minbase", *include)).encode()).hexdigest()[:16]
    assert plain.key == before
    git = bases.DebootstrapRecipe("bookworm", MIRROR, include, packages=("git",))
    dev = bases.DebootstrapRecipe("bookworm", MIRROR, include, packages=expand_packages(["dev"], []))
    assert len({plain.key, git.key, dev.key}) == 3
    assert git.key == bases.DebootstrapRecipe("bookworm", MIRROR, include, packages=("git",)).key
    assert git.plain == plain and git.plain.key == plain.key
    # packages never reach debootstrap itself: they go on with apt-get
    assert bases.debootstrap_argv(git, Path("/t")) == bases.debootstrap_argv(plain, Path("/t"))


def test_packages_need_a_debian_base(tmp_path: Path) -> None:
    tarball = tmp_path / "rootfs.tar"
    tarball.write_bytes(b"")
    with pytest.raises(Invalid, match="debian-<suite> base only"):
        bases.BaseMaker(tmp_path).make(str(tarball), tmp_path / "d", packages=("git",))


def test_apt_runs_chrooted_in_namespaces_of_its_own() -> None:
    argv = aptlayer.chroot_argv(Path("/c/root"), *aptlayer.install_argv(("git", "g++")))
    assert argv[:6] == ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc=/c/root/proc"]
    assert argv[6:9] == ["chroot", "/c/root", "apt-get"]
    assert "--no-install-recommends" in argv and argv[-2:] == ["git", "g++"]


def test_apt_output_gives_progress_and_names_what_it_lacks() -> None:
    seen: list[tuple[str, float]] = []
    watch = aptlayer.InstallWatch(lambda stage, fraction: seen.append((stage, fraction)))
    lines = [
        "Reading package lists...",
        "0 upgraded, 2 newly installed, 0 to remove and 0 not upgraded.",
        "Get:1 http://deb.debian.org/debian bookworm/main amd64 git amd64 1:2.39.5 [7264 kB]",
        "Get:2 http://deb.debian.org/debian bookworm/main amd64 less amd64 590-2 [128 kB]",
        "Setting up less (590-2.1~deb12u2) ...",
        "Setting up git (1:2.39.5-0+deb12u2) ...",
        "E: Unable to locate package nosuchpkg",
        "E: Package 'virtualonly' has no installation candidate",
        "Note, selecting 'python3.11' for regex 'pyth.n3'",
    ]
    for line in lines:
        watch(line)
    assert [f for _, f in seen] == [0.25, 0.5, 0.75, 0.99]
    assert watch.missing == ["nosuchpkg", "virtualonly"]
    assert watch.patterns == ["pyth.n3"]


def test_default_size_leaves_as_much_free_as_the_files_take() -> None:
    assert default_size_mib(230) == 1024  # a plain base: the size images always had
    assert default_size_mib(512) == 1024
    assert default_size_mib(513) == 1280
    assert default_size_mib(710) == 1536  # about the dev profile


def test_debugfs_ls_output_is_parsed() -> None:
    out = (
        "/2/040755/0/0/./4096/\n/2/040755/0/0/../4096/\n/12/0100644/0/0/__init__.py/38/\n/13/040755/0/0/agent/4096/\n\n"
    )
    entries = ext4edit.parse_ls("/opt/nexus/lib/nexus", out)
    assert entries == [
        ext4edit.Entry("/opt/nexus/lib/nexus/__init__.py", 0o100644, 38),
        ext4edit.Entry("/opt/nexus/lib/nexus/agent", 0o040755, 4096),
    ]
    assert [e.is_dir for e in entries] == [False, True]


@pytest.mark.parametrize("path", ["/a b", "/x\ndump /etc/shadow /tmp/x", '/a"b', "/a/../etc", "relative", "/"])
def test_guest_names_that_could_smuggle_a_debugfs_command_are_refused(path: str) -> None:
    with pytest.raises(Invalid, match="unexpected file name"):
        ext4edit.safe(path)


def test_replace_commands_remove_the_old_then_write_the_new(tmp_path: Path) -> None:
    stage = tmp_path / "stage"
    (stage / "opt" / "lib").mkdir(parents=True)
    (stage / "usr" / "bin").mkdir(parents=True)
    new = stage / "opt" / "lib" / "new.py"
    launcher = stage / "usr" / "bin" / "tool"
    for path, mode in ((new, 0o644), (launcher, 0o755)):
        path.write_text("x = 1\n")
        os.chmod(path, mode)
        os.utime(path, (1_700_000_000, 1_700_000_000))
    old = [
        ext4edit.Entry("/opt/lib/agent", 0o040755, 4096),
        ext4edit.Entry("/opt/lib/agent/old.py", 0o100644, 3),
    ]
    # /opt exists, /opt/lib is a link the writes follow, /usr/bin/tool is there already, the rest is new
    kinds = {"/opt": "directory", "/opt/lib": "symlink", "/usr": "directory", "/usr/bin/tool": "regular"}
    commands = ext4edit.replace_commands(old, stage, {**kinds, "/usr/bin": None, "/opt/lib/new.py": None})
    assert commands[:3] == ["rm /opt/lib/agent/old.py", "rmdir /opt/lib/agent", "mkdir /usr/bin"]
    assert commands[3:] == [
        f"write {new} /opt/lib/new.py",
        "sif /opt/lib/new.py mode 0100644",
        "sif /opt/lib/new.py uid 0",
        "sif /opt/lib/new.py gid 0",
        "sif /opt/lib/new.py mtime @1700000000",
        "rm /usr/bin/tool",
        f"write {launcher} /usr/bin/tool",
        "sif /usr/bin/tool mode 0100755",
        "sif /usr/bin/tool uid 0",
        "sif /usr/bin/tool gid 0",
        "sif /usr/bin/tool mtime @1700000000",
    ]
    with pytest.raises(Invalid, match="/usr/bin is a regular file in the image"):
        ext4edit.replace_commands([], stage, {**kinds, "/usr/bin": "regular"})
    with pytest.raises(Invalid, match="/usr/bin/tool is a directory in the image"):
        ext4edit.replace_commands([], stage, {**kinds, "/usr/bin/tool": "directory"})
