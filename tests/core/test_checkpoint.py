"""neumeta_core/checkpoint.py: one read per load, a digest of exactly those bytes, and every file that is not a
checkpoint this version reads refused in one message that names it (never torch's own advice)."""

from __future__ import annotations

import hashlib
import io

import pytest
import torch

from neumeta_core import checkpoint
from neumeta_core.errors import InputError


@pytest.fixture(scope="module")
def payload():
    return torch.load(checkpoint.BUNDLED, weights_only=True)


def save(tmp_path, payload, name="c.pt"):
    path = tmp_path / name
    torch.save(payload, path)
    return path


def test_the_digest_is_that_of_the_bytes_loaded(bundled):
    assert bundled.digest == hashlib.sha256(checkpoint.BUNDLED.read_bytes()).hexdigest()


def test_an_unknown_field_is_refused_not_dropped(tmp_path, payload):
    with pytest.raises(InputError, match=r"does not know \(extra_field\)"):
        checkpoint.load(save(tmp_path, {**payload, "extra_field": 1}))
    for section in ("target", "hypernet", "train"):
        changed = {**payload, section: {**payload[section], "new_knob": 3}}
        with pytest.raises(InputError, match=r"no field 'new_knob': the file was written by a newer version"):
            checkpoint.load(save(tmp_path, changed))


def test_a_newer_format_is_refused(tmp_path, payload):
    with pytest.raises(InputError, match=r"in format 'neumeta-checkpoint/3'; this version .* reads"):
        checkpoint.load(save(tmp_path, {**payload, "format": "neumeta-checkpoint/3"}))


def test_a_missing_field_is_a_damaged_checkpoint(tmp_path, payload):
    damaged = {k: v for k, v in payload.items() if k != "hypernet_state"}
    with pytest.raises(InputError, match="damaged checkpoint: it lacks hypernet_state"):
        checkpoint.load(save(tmp_path, damaged))


def test_weights_that_do_not_fit_the_configs(tmp_path, payload):
    small = {**payload, "hypernet": {**payload["hypernet"], "hidden": 16}}
    with pytest.raises(InputError, match="weights do not fit its configs"):
        checkpoint.load(save(tmp_path, small))


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"not a checkpoint", "not a torch file"),
        (b"PK\x03\x04truncated", "not a torch file"),
        (None, "holds Python objects that a checkpoint never does"),
        ("half", "damaged torch file"),
    ],
    ids=["text", "zip header", "foreign pickle", "truncated"],
)
def test_foreign_files_are_refused_in_one_message(tmp_path, capsys, content, says):
    path = tmp_path / "f.pt"
    if content is None:
        torch.save({"format": checkpoint.FORMAT, "x": Evil()}, path)
    elif content == "half":
        data = checkpoint.BUNDLED.read_bytes()
        buf = io.BytesIO(data)
        path.write_bytes(buf.getvalue()[: len(data) // 2] + buf.getvalue()[-4096:])  # the zip directory kept
    else:
        path.write_bytes(content)
    with pytest.raises(InputError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert str(path) in message and says in message
    assert "weights_only" not in message and "\n" not in message
    assert "this must never run" not in capsys.readouterr().out


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        checkpoint.load(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="is a directory"):
        checkpoint.load(tmp_path)
