"""``form pack build`` on a fog of two real node processes, then the second node pulls the image.

The whole path of issue 11 with nothing faked: the Formfile is validated and its password
hashed by ``form``, the context is uploaded in chunks to node 0's gateway, the build request
replicates, node 0 (``via``, a builder) builds it from the cached base with the real builder,
reports ``Built``; node 1 then fetches the image, kernel, initrd and manifest by digest over
libp2p and verifies them. A second ``form pack build`` of the same tree uploads nothing and is
the same, already built, build.

Needs root, debootstrap, qemu-img and mkfs.ext4 (``scripts/ensure-system-deps.sh``): a missing
tool fails the test, it is not skipped. The base comes from the shared cache dir, so it is made
once per machine (tests/real/test_pack_build.py makes it too).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from node.devnet import LocalFog
from node.pack.service import builder_tools_missing
from tests.helpers import Form, form_runner

pytestmark = [pytest.mark.real, pytest.mark.slow]

BUILD_S_MAX = 1500  # a cold base (debootstrap) plus INSTALL, under TCG-free chroot work

FORMFILE = """\
NAME hello-web
USER username:web passwd:s3cret sudo:true
VCPU 1
MEM 512
INSTALL python3
COPY ./app /app
RUN echo built > /app/built.txt
WORKDIR /app
EXPOSE 8000
ENTRYPOINT ["python3", "-m", "http.server", "8000"]
"""


@pytest.fixture
def fog(tmp_path: Path) -> Iterator[LocalFog]:
    missing = builder_tools_missing()
    assert not missing, f"the builder needs {missing}: run scripts/ensure-system-deps.sh run"
    (tmp_path / "fog").mkdir()
    fog = LocalFog(tmp_path / "fog", extra_args=("--heartbeat-s", "0"))
    try:
        fog.start(0)
        fog.start(1)
        fog.wait(lambda: fog.converged(2), timeout_s=60)
        yield fog
    finally:
        fog.stop_all()


def _form(tmp_path: Path, gateway: str) -> Form:
    return form_runner(tmp_path, gateway, timeout_s=BUILD_S_MAX)


def _blob(data_dir: Path, digest: str) -> Path:
    found = [p for p in (data_dir / "blobs").rglob(digest) if p.is_file()]
    assert found, f"no blob {digest} under {data_dir / 'blobs'}"
    return found[0]


def test_a_build_on_one_node_is_pulled_and_verified_by_another(
    tmp_path: Path, fog: LocalFog
) -> None:
    gateways = [str((fog.status(i) or {})["gateway"]) for i in range(2)]
    form = _form(tmp_path, gateways[0])
    assert form("init").returncode == 0
    context = tmp_path / "ctx"
    (context / "app").mkdir(parents=True)
    (context / "app" / "index.html").write_text("<h1>hello from the fog</h1>\n")
    (context / "app" / "notes.tmp").write_text("left out by .formignore\n")
    (context / ".formignore").write_text("**/*.tmp\n")  # as .dockerignore: anchored at the root
    (context / "Formfile").write_text(FORMFILE)

    done = form("pack", "build", str(context), "--json")
    assert done.returncode == 0, done.stdout + done.stderr + fog.log(0)[-4000:]
    build = json.loads(done.stdout)
    assert build["status"] == "Built", build
    node0 = (fog.status(0) or {})["address"]
    assert build["node_id"] == node0  # via: the node that holds the context builds it
    assert "s3cret" not in json.dumps(build)

    image = _blob(fog.data_dir(0), build["image"])
    assert hashlib.sha256(image.read_bytes()).hexdigest() == build["image"]

    pulled = form(
        "pack", "pull", "--build-id", build["build_id"], "--json", gateway_url=gateways[1]
    )
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr + fog.log(1)[-4000:]
    answer = json.loads(pulled.stdout)
    assert answer["image"] == build["image"]
    assert answer["verified"] is True
    assert build["image"] in answer["fetched"]
    copy = _blob(fog.data_dir(1), build["image"])
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == build["image"]
    for name in ("kernel", "initrd"):
        assert (
            hashlib.sha256(_blob(fog.data_dir(1), answer[name]).read_bytes()).hexdigest()
            == answer[name]
        )

    # The same tree again: same password hash (salt from the key), same build id, nothing sent.
    again = form("pack", "build", str(context), "--json")
    assert again.returncode == 0, again.stderr
    second = json.loads(again.stdout)
    assert second["build_id"] == build["build_id"]
    assert second["status"] == "Built"
    assert second["context_upload"]["chunks_sent"] == 0
    assert second["context_upload"]["bytes_sent"] == 0
    assert build["context_upload"]["files"] == 1  # index.html; notes.tmp is ignored

    # A failing step: exit 1, and the replicated record names the step, the user's own line
    # (comments and blank lines count) and the last output, read back through the other node.
    (context / "Formfile").write_text(
        "# fails on purpose\nNAME hello-broken\nUSER username:web passwd:s3cret\n\n"
        "RUN echo about to fail && exit 3\n"
    )
    failed = form("pack", "build", str(context), "--json")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    record = json.loads(failed.stdout)
    assert record["status"] == "CriticalError"
    assert record["line"] == 5
    assert record["step_name"].startswith("RUN echo about to fail")
    assert "about to fail" in record["log_tail"]
    deadline = time.monotonic() + 30  # the report gossips to node 1
    while True:
        status = form(
            "pack", "status", "--build-id", record["build_id"], "--json", gateway_url=gateways[1]
        )
        seen = json.loads(status.stdout).get("status") if status.returncode == 0 else None
        if seen == "CriticalError" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert seen == "CriticalError", status.stdout + status.stderr
