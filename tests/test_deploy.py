"""The tree deploys to a Hugging Face Space as it is.

- every tracked file that is binary or over 10 MB matches a Git LFS rule in .gitattributes (git's
  own attribute matching decides), and no text file does (the Hub reads README.md and
  requirements.txt as text);
- the README front matter pins the Gradio version of requirements.txt and a Python version;
- the README's install command works as root without sudo and as a user with sudo (run with fake
  apt-get / python on PATH);
- the README's upload command, run through the real `hf` CLI with the two Hub calls recorded,
  creates a Gradio Space and uploads every tracked file and nothing git ignores.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from conftest import ROOT

HUB_SIZE_LIMIT = 10 * 1024 * 1024      # the Hub refuses larger files outside LFS/Xet
SNIFF_BYTES = 8192                     # git's own binary check looks at the first 8 kB


def git(*args: str, input: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=ROOT, input=input, capture_output=True,
                          check=True, timeout=60).stdout


def tracked_files() -> list[str]:
    return [p for p in git("ls-files", "-z").decode().split("\0") if p and (ROOT / p).is_file()]


def needs_lfs(path: Path) -> bool:
    """Binary (NUL in the first 8 kB, or not UTF-8) or over the Hub's 10 MB limit."""
    if path.stat().st_size > HUB_SIZE_LIMIT:
        return True
    data = path.read_bytes()
    if b"\0" in data[:SNIFF_BYTES]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def filter_attr(paths: list[str]) -> dict[str, str]:
    """`git check-attr filter` for each path: 'lfs', 'unspecified', ..."""
    out = git("check-attr", "-z", "--stdin", "filter", input="\0".join(paths).encode()).decode()
    parts = out.split("\0")
    return {parts[i]: parts[i + 2] for i in range(0, len(parts) - 2, 3)}


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.match(r"---\n(.*?)\n---\n", text, re.S)
    assert m, "README.md must start with the Space's YAML front matter between --- lines"
    return yaml.safe_load(m.group(1))


def requirement(name: str) -> Requirement:
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            if req.name.lower() == name:
                return req
    raise AssertionError(f"{name} is not in requirements.txt")


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, f"README.md has no '## {title}' section"
    return m.group(1)


def code_lines(section: str) -> list[str]:
    """Shell commands in the section's code blocks (backslash continuations joined)."""
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def packages_txt() -> list[str]:
    return [ln.strip() for ln in (ROOT / "packages.txt").read_text().splitlines()
            if ln.strip() and not ln.strip().startswith("#")]


# ---- Git LFS ----------------------------------------------------------------------------------
def test_binary_and_large_files_match_an_lfs_rule():
    files = tracked_files()
    binary = [p for p in files if needs_lfs(ROOT / p)]
    # the files the Hub refused before .gitattributes existed are among them
    assert {"models/default/text.safetensors", "data/examples/angry_actor17.flac"} <= set(binary)
    attrs = filter_attr(binary)
    missing = sorted(p for p in binary if attrs.get(p) != "lfs")
    assert not missing, f"binary or >10 MB files without an LFS rule in .gitattributes: {missing}"


def test_text_files_stay_out_of_lfs():
    text = [p for p in tracked_files() if not needs_lfs(ROOT / p)]
    assert {"README.md", "requirements.txt", "packages.txt", "app.py"} <= set(text)
    attrs = filter_attr(text)
    in_lfs = sorted(p for p in text if attrs.get(p) == "lfs")
    assert not in_lfs, f"text files matched by an LFS rule (the Space reads them as text): {in_lfs}"


# ---- Space metadata ---------------------------------------------------------------------------
def test_front_matter_pins_the_gradio_of_requirements():
    meta = front_matter()
    assert meta["sdk"] == "gradio" and (ROOT / meta["app_file"]).is_file()
    spec = list(requirement("gradio").specifier)
    assert len(spec) == 1 and spec[0].operator == "==", \
        f"pin gradio to one version in requirements.txt (the Space installs sdk_version): {spec}"
    assert str(meta["sdk_version"]) == spec[0].version
    from importlib.metadata import version
    assert version("gradio") == spec[0].version, "the tests run on another Gradio than the Space"
    py = str(meta["python_version"])
    assert re.fullmatch(r"3\.\d+", py), f"python_version must be a string like '3.11', got {py!r}"
    requires = re.search(r'requires-python\s*=\s*"([^"]+)"',
                         (ROOT / "pyproject.toml").read_text()).group(1)
    assert SpecifierSet(requires).contains(py + ".0"), (py, requires)


# ---- the README's install command -------------------------------------------------------------
def fake_bin(tmp_path: Path, uid: int, with_sudo: bool) -> Path:
    """A PATH with the real sh/dirname/grep/tr/env, and id, apt-get, python (and sudo) that only
    write what they were asked to do into $LOG."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sh", "dirname", "grep", "tr", "env"):
        real = subprocess.run(["bash", "-c", f"command -v {tool}"], capture_output=True,
                              text=True).stdout.strip()
        assert real, f"{tool} not found"
        (bin_dir / tool).symlink_to(real)
    fakes = {"id": f'echo {uid}', "apt-get": 'echo "apt-get $*" >> "$LOG"',
             "python": 'echo "python $*" >> "$LOG"'}
    if with_sudo:
        fakes["sudo"] = 'echo "sudo $*" >> "$LOG"; exec "$@"'
    for name, body in fakes.items():
        f = bin_dir / name
        f.write_text(f"#!/bin/sh\n{body}\n")
        f.chmod(0o755)
    return bin_dir


@pytest.mark.parametrize("uid,with_sudo", [(0, False), (1000, True), (1000, False)],
                         ids=["root-no-sudo", "user-with-sudo", "user-without-sudo"])
def test_readme_install_command(tmp_path, uid, with_sudo):
    cmd = code_lines(readme_section("Two commands"))[0]
    assert not cmd.startswith("sudo"), "most containers have no sudo (one is root there)"
    assert cmd.endswith("python app.py"), "the first command installs and starts the app"
    log = tmp_path / "log"
    log.touch()
    env = {"PATH": str(fake_bin(tmp_path, uid, with_sudo)), "LOG": str(log)}
    r = subprocess.run(["/bin/bash", "-c", cmd], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=60)
    calls = log.read_text().splitlines()
    if uid != 0 and not with_sudo:
        assert r.returncode != 0 and "root" in r.stderr and "sudo" in r.stderr
        assert not calls, "nothing is installed or started when it cannot install"
        return
    assert r.returncode == 0, r.stderr
    apt = [c for c in calls if c.startswith("apt-get")]
    assert [c.split()[1] for c in apt] == ["update", "install"]
    assert set(apt[1].split()[2:]) - {"-y", "--no-install-recommends", "-q", "-qq"} \
        == set(packages_txt())
    assert any(c.startswith("python -m pip install") and "-r requirements.txt" in c for c in calls)
    assert calls[-1] == "python app.py"
    sudo = [c for c in calls if c.startswith("sudo")]
    if with_sudo:      # apt-get through sudo, pip as the user
        assert len(sudo) == 2 and all("apt-get" in c for c in sudo)
    else:
        assert not sudo


# ---- the README's upload command --------------------------------------------------------------
HF_DRIVER = r"""
import json, sys, types
from huggingface_hub import HfApi
calls = {}
def create_repo(self, repo_id, **kw):
    calls["create_repo"] = {"repo_id": repo_id, **kw}
    return types.SimpleNamespace(repo_id=repo_id)
def upload_folder(self, **kw):
    calls["upload_folder"] = kw
    return "https://huggingface.co/spaces/recorded"
HfApi.create_repo, HfApi.upload_folder = create_repo, upload_folder
from huggingface_hub.cli.hf import main
sys.argv = ["hf", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    if exc.code:
        raise
print("RECORDED " + json.dumps(calls, default=str))
"""


def gitignore_examples() -> list[str]:
    """One path per .gitignore pattern (at the top and one folder down where the pattern has no
    inner slash), e.g. 'data/media/' -> data/media/x/file."""
    out = []
    for pat in (ROOT / ".gitignore").read_text().splitlines():
        pat = pat.strip()
        if not pat or pat.startswith(("#", "!")):
            continue
        path = pat.rstrip("/").lstrip("/").replace("**", "x").replace("*", "x").replace("?", "x")
        if pat.endswith("/"):
            path += "/x/file"
        out.append(path)
        if "/" not in pat.rstrip("/"):
            out.append("emodemo/" + path)
    return out


def test_readme_upload_command_uploads_the_tracked_tree(tmp_path):
    from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects
    cmds = [c for c in code_lines(readme_section("Deploy to a Hugging Face Space"))
            if c.startswith("hf upload")]
    assert len(cmds) == 1, "the section shows the one command that uploads the project"
    argv = shlex.split(cmds[0])[1:]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
           "HF_HOME": str(tmp_path / "hf")}
    env.pop("HF_TOKEN", None)
    r = subprocess.run([sys.executable, "-c", HF_DRIVER, *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    calls = json.loads(r.stdout.split("RECORDED ", 1)[1])
    assert calls["create_repo"]["repo_type"] == "space"
    assert calls["create_repo"]["space_sdk"] == "gradio"
    up = calls["upload_folder"]
    assert up["repo_type"] == "space" and Path(up["folder_path"]).resolve() == ROOT
    assert up["path_in_repo"] in (".", "", None)
    ignore = list(up["ignore_patterns"] or []) + list(DEFAULT_IGNORE_PATTERNS)

    # what upload_folder would send: every file under the folder that no pattern drops
    present = []
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d != ".git"]
        rel = Path(dirpath).relative_to(ROOT)
        present += [(rel / f).as_posix() for f in filenames]
    candidates = sorted(set(present) | set(gitignore_examples()))
    uploaded = set(filter_repo_objects(candidates, ignore_patterns=ignore))
    missing = sorted(set(tracked_files()) - uploaded)
    assert not missing, f"tracked files the upload command leaves out: {missing}"
    ignored = set(subprocess.run(["git", "check-ignore", "--stdin", "-z"], cwd=ROOT,
                                 input="\0".join(candidates), capture_output=True, text=True,
                                 timeout=60).stdout.split("\0")) - {""}
    assert set(gitignore_examples()) <= ignored       # the examples do stand for .gitignore
    leaked = sorted(uploaded & ignored)
    assert not leaked, f"files git ignores that the upload command would send: {leaked[:20]}"
