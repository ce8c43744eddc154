"""diagnose() names the broken file and the cause in one line, and never flags a valid checkpoint."""

import json
import os
import shutil
import struct
import subprocess
import sys

import pytest

from pytest_invarlock.hf_adapter.checkpoint import diagnose, one_line
from pytest_invarlock.hf_adapter.fixtures import catalog, fixture_path, package_path, packages


def copy_fixture(tmp_path, name="gpt2"):
    target = tmp_path / name
    shutil.copytree(fixture_path(name), target)
    return target


def read_safetensors(path):
    """Return (header dict, data bytes) of a safetensors file."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def write_safetensors(path, header, data):
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def assert_safetensors_refuses(path):
    """The diagnosis is no false positive: the safetensors library itself rejects the file."""
    from safetensors import safe_open

    with pytest.raises(Exception), safe_open(str(path), framework="numpy") as handle:  # noqa: B017
        list(handle.keys())


def assert_transformers_refuses(directory):
    import transformers

    with pytest.raises(Exception):  # noqa: B017
        transformers.AutoModelForCausalLM.from_pretrained(directory)


# --- valid checkpoints: no finding ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(catalog()))
def test_every_bundled_fixture_is_clean(name):
    assert diagnose(fixture_path(name)) is None


def test_installed_real_checkpoints_are_clean():
    found = [path for path in map(package_path, packages().values()) if path is not None]
    if not found:
        pytest.skip("no real-checkpoint package installed")
    for path in found:
        assert diagnose(path) is None, path


@pytest.fixture
def sharded(tmp_path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(fixture_path("gpt2"))
    target = tmp_path / "sharded"
    model.save_pretrained(target, max_shard_size="20KB")
    return target


def test_sharded_checkpoint_is_clean(sharded):
    assert len(list(sharded.glob("model-*-of-*.safetensors"))) > 1
    assert (sharded / "model.safetensors.index.json").is_file()
    assert diagnose(sharded) is None
    assert diagnose(str(sharded)) is None  # str and PathLike both accepted


def test_bin_only_checkpoint_is_not_judged(tmp_path):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(fixture_path("gpt2"))
    target = tmp_path / "bin-only"
    target.mkdir()
    shutil.copy(fixture_path("gpt2") / "config.json", target / "config.json")
    torch.save(model.state_dict(), target / "pytorch_model.bin")
    assert diagnose(target) is None


def test_missing_config_is_not_judged(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "config.json").unlink()
    assert diagnose(target) is None


def test_unknown_and_hidden_files_are_ignored(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "model.gguf").write_bytes(b"GGUF\x03\x00garbage")
    (target / "README.md").write_text("# tiny\n")
    (target / "._model.safetensors").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    assert diagnose(target) is None


def test_not_a_directory_is_left_to_the_caller(tmp_path):
    target = copy_fixture(tmp_path)
    assert diagnose(target / "config.json") is None
    assert diagnose(tmp_path / "does-not-exist") is None


def test_diagnose_imports_neither_torch_nor_transformers(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "model.safetensors").write_bytes(b"\x00" * 4)
    code = (
        "import sys\n"
        "from pytest_invarlock.hf_adapter.checkpoint import diagnose\n"
        f"assert diagnose({str(target)!r}).startswith('model.safetensors: ')\n"
        "loaded = {'torch', 'transformers', 'safetensors'} & set(sys.modules)\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- safetensors defects ------------------------------------------------------------------------


def test_truncated_safetensors_names_both_byte_counts(tmp_path):
    target = copy_fixture(tmp_path)
    weights = target / "model.safetensors"
    header, data = read_safetensors(weights)
    announced = max(info["data_offsets"][1] for name, info in header.items() if name != "__metadata__")
    assert announced == len(data)
    weights.write_bytes(weights.read_bytes()[:-1000])

    assert diagnose(target) == (
        f"model.safetensors: truncated (header announces {announced} bytes of tensor data, "
        f"file has {announced - 1000})"
    )
    assert_safetensors_refuses(weights)
    assert_transformers_refuses(target)


def test_extra_bytes_after_the_data(tmp_path):
    target = copy_fixture(tmp_path)
    weights = target / "model.safetensors"
    _, data = read_safetensors(weights)
    weights.write_bytes(weights.read_bytes() + b"\x00" * 16)
    assert diagnose(target) == (
        f"model.safetensors: 16 extra bytes after the tensor data "
        f"(header announces {len(data)} bytes of tensor data, file has {len(data) + 16})"
    )
    assert_safetensors_refuses(weights)


def test_file_shorter_than_the_length_prefix(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "model.safetensors").write_bytes(b"\x01\x02\x03")
    assert diagnose(target) == "model.safetensors: file is 3 bytes, too short for the 8-byte header length"
    assert_safetensors_refuses(target / "model.safetensors")


def test_header_length_beyond_the_file(tmp_path):
    target = copy_fixture(tmp_path)
    weights = target / "model.safetensors"
    raw = weights.read_bytes()
    weights.write_bytes(struct.pack("<Q", 10 * len(raw)) + raw[8:])
    assert diagnose(target) == (
        f"model.safetensors: header length {10 * len(raw)} is larger than the {len(raw) - 8} bytes "
        "that follow it (truncated?)"
    )
    assert_safetensors_refuses(weights)


@pytest.mark.parametrize(("garbage", "cause"), [
    (b"\xff", "header is not UTF-8 (invalid start byte at byte 8)"),
    (b"x", "header is not valid JSON (Expecting value at line 1 column 1)"),
])
def test_garbage_header(tmp_path, garbage, cause):
    target = copy_fixture(tmp_path)
    weights = target / "model.safetensors"
    raw = weights.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    weights.write_bytes(raw[:8] + garbage * length + raw[8 + length:])
    assert diagnose(target) == f"model.safetensors: {cause}"
    assert_safetensors_refuses(weights)


def test_header_that_is_not_an_object(tmp_path):
    target = copy_fixture(tmp_path)
    write_safetensors(target / "model.safetensors", [1, 2, 3], b"")
    assert diagnose(target) == "model.safetensors: header is not a JSON object (top level is a list)"
    assert_safetensors_refuses(target / "model.safetensors")


def test_tensor_size_disagrees_with_dtype_and_shape(tmp_path):
    target = copy_fixture(tmp_path)
    weights = target / "model.safetensors"
    header, data = read_safetensors(weights)
    name = "transformer.wte.weight"
    assert header[name]["dtype"] == "F32" and header[name]["shape"] == [128, 64]
    header[name]["shape"] = [128, 63]
    write_safetensors(weights, header, data)
    assert diagnose(target) == (
        f"model.safetensors: tensor {name!r} (F32, shape [128, 63]) needs {128 * 63 * 4} bytes, "
        f"its data_offsets span {128 * 64 * 4}"
    )
    assert_safetensors_refuses(weights)


def test_overlapping_offsets(tmp_path):
    target = copy_fixture(tmp_path)
    weights = target / "model.safetensors"
    header, data = read_safetensors(weights)
    names = sorted((info["data_offsets"], name) for name, info in header.items() if name != "__metadata__")
    (_, first_end), _ = names[0]
    second = names[1][1]
    begin, end = header[second]["data_offsets"]
    header[second]["data_offsets"] = [begin - 4, end - 4]
    write_safetensors(weights, header, data)
    assert diagnose(target) == (
        f"model.safetensors: tensor {second!r} has data_offsets [{begin - 4}, {end - 4}], "
        f"but the previous tensor data ends at byte {first_end}"
    )
    assert_safetensors_refuses(weights)


def test_valid_header_variants_are_not_flagged(tmp_path):
    """Spellings safetensors accepts: no __metadata__, null __metadata__, extra keys, zero-size tensors."""
    target = tmp_path / "variants"
    target.mkdir()
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    write_safetensors(target / "a.safetensors", {"w": f32}, b"\x00" * 8)
    write_safetensors(target / "b.safetensors", {"__metadata__": None, "w": {**f32, "extra": 1}}, b"\x00" * 8)
    empty = {"dtype": "BF16", "shape": [0, 3], "data_offsets": [8, 8]}
    write_safetensors(target / "c.safetensors", {"w": f32, "e": empty, "s": {
        "dtype": "I64", "shape": [], "data_offsets": [8, 16]}}, b"\x00" * 16)
    write_safetensors(target / "d.safetensors", {"__metadata__": {"format": "pt"}}, b"")
    write_safetensors(target / "e.safetensors", {"w": {**f32, "dtype": "NEW_DTYPE"}}, b"\x00" * 8)
    assert diagnose(target) is None


# --- config.json defects ------------------------------------------------------------------------


def test_config_syntax_error_gives_line_and_column(tmp_path):
    target = copy_fixture(tmp_path)
    config = target / "config.json"
    lines = config.read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if '"model_type": "gpt2"' in line)
    lines[row] = lines[row].replace('"gpt2"', "gpt2")  # an unquoted string
    config.write_text("\n".join(lines) + "\n")
    column = lines[row].index("gpt2") + 1

    expected = f"config.json: invalid JSON at line {row + 1} column {column} (Expecting value)"
    assert diagnose(target) == expected
    assert_transformers_refuses(target)


def test_config_that_is_a_list(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "config.json").write_text("[1, 2]\n")
    assert diagnose(target) == "config.json: not a JSON object (top level is a list)"
    assert_transformers_refuses(target)


def test_config_not_utf8(tmp_path):
    target = copy_fixture(tmp_path)
    config = target / "config.json"
    raw = config.read_bytes()
    at = raw.index(b'"gpt2"') + 5
    config.write_bytes(raw[:at] + b"\xe9" + raw[at:])  # a Latin-1 e-acute
    assert diagnose(target) == f"config.json: not UTF-8 (invalid continuation byte at byte {at})"
    assert_transformers_refuses(target)


def test_config_empty(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "config.json").write_text("  \n")
    assert diagnose(target) == "config.json: empty file"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_config_unreadable(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "config.json").chmod(0)
    try:
        assert diagnose(target) == "config.json: unreadable (Permission denied)"
    finally:
        (target / "config.json").chmod(0o644)


def test_config_is_checked_before_the_weights(tmp_path):
    target = copy_fixture(tmp_path)
    (target / "config.json").write_text("{")
    (target / "model.safetensors").write_bytes(b"")
    assert diagnose(target).startswith("config.json: invalid JSON at line 1 column 2 ")


# --- sharded index defects ----------------------------------------------------------------------


def test_index_naming_a_missing_shard(sharded):
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    (sharded / last).unlink()
    assert diagnose(sharded) == f"model.safetensors.index.json: weight_map names {last}, which does not exist"
    assert_transformers_refuses(sharded)


def test_index_invalid_json(sharded):
    (sharded / "model.safetensors.index.json").write_text('{"weight_map": }')
    assert diagnose(sharded) == (
        "model.safetensors.index.json: invalid JSON at line 1 column 16 (Expecting value)"
    )


def test_truncated_shard_is_named(sharded):
    shard = sorted(sharded.glob("model-*-of-*.safetensors"))[1]
    shard.write_bytes(shard.read_bytes()[:-1])
    assert diagnose(sharded).startswith(f"{shard.name}: truncated (header announces ")


# --- one_line -------------------------------------------------------------------------------------


def test_one_line_keeps_the_first_line_and_drops_the_cause():
    try:
        try:
            raise OSError("disk\nsecond line of the cause")
        except OSError as cause:
            raise ValueError("\n  \nbad checkpoint  \nTraceback-like detail\n") from cause
    except ValueError as exc:
        assert one_line(exc) == "ValueError: bad checkpoint"


def test_one_line_without_a_message_and_when_too_long():
    assert one_line(KeyError()) == "KeyError"
    long = one_line(RuntimeError("x" * 1000))
    assert long.startswith("RuntimeError: xxx") and long.endswith("\N{HORIZONTAL ELLIPSIS}")
    assert len(long) <= 300 and "\n" not in long


def test_one_line_survives_a_broken_str():
    class Broken(Exception):
        def __str__(self):
            raise RuntimeError("no")

    assert one_line(Broken()) == "Broken"
