"""Model selection (:func:`compressor.export.scanner.model_selection.select_model`), a pure function of the config
message, the JSON parameters and the scan, as a table: each row is (config message, JSON parameters, scan, served
models, ``--default-model``) -> the model chosen and why, or the error."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from compressor.data.mrd_header import EncodingGeometry
from compressor.export.scanner.model_selection import (
    ModelProfile,
    ScanDescription,
    SelectionError,
    select_model,
)
from compressor.export.scanner.stream_parameters import StreamRequest, json_parameters
from tests.synthetic_scans import encoding_header

WIDTH = 12
MASK = [0, 1, 3, 6, 10]  # uncentred columns


def lines(columns) -> np.ndarray:
    values = np.zeros(WIDTH, bool)
    values[list(columns)] = True
    return values


def profile(name: str, aliases=(), size=(16, WIDTH), columns=MASK, channels=2) -> ModelProfile:
    return ModelProfile(name, tuple(aliases), size, lines(columns), channels)


MODELS = {
    "fp32": profile("sft_kd_at_d3c5@4x", ["sft_kd/at/d3c5@4x"]),
    "int8": profile("sft_kd_at_d3c5@4x.int8"),
    "teacher": profile("teacher_d5c5@4x", ["teacher/d5c5@4x"], columns=[*MASK, 2]),
    "real": profile("real_d2c2", channels=1),
    "large": profile("large_d3c5", size=(20, WIDTH)),
}


def geometry(height: int = 16) -> EncodingGeometry:
    xml = encoding_header((2 * height, WIDTH, 1), (height, WIDTH, 1), (400.0, 180.0, 5.0), (200.0, 180.0, 5.0),
                          (0, WIDTH - 1, WIDTH // 2))
    return EncodingGeometry.from_xml(xml, "scan")


SCANS = {
    "16x12, 4 coils, mask lines": ScanDescription(geometry(), 4, lines(MASK)),
    "16x12, 1 coil, mask lines + 2": ScanDescription(geometry(), 1, lines([*MASK, 2])),
    "20x12, 4 coils, mask lines": ScanDescription(geometry(20), 4, lines(MASK)),
    "16x12, 4 coils, lines not known yet": ScanDescription(geometry(), 4, None),
}
ALL = tuple(MODELS)
GADGETRON = '<?xml version="1.0"?><configuration><reader><slot>1008</slot></reader></configuration>'


@dataclass(frozen=True)
class Row:
    """config message (``None``: none; ``text=True``: a config text), JSON parameters text, scan, served models,
    ``--default-model`` -> the model (a key of :data:`MODELS`, ``None``: waiting for the first slice) and a fragment
    of the reason, or an error fragment."""

    config: str | None
    parameters: str | None
    scan: str
    chosen: str | None
    says: str
    served: tuple[str, ...] = ALL
    default: str | None = None
    text: bool = False
    error: bool = False


TABLE = [
    Row("openrecon", '{"parameters": {"customconfig": "sft_kd_at_d3c5@4x.int8"}}', "16x12, 4 coils, mask lines",
        "int8", "named by parameters.customconfig"),
    Row("openrecon", '{"parameters": {"config": "sft_kd/at/d3c5@4x"}}', "16x12, 4 coils, mask lines",
        "fp32", "named by parameters.config"),  # a results name selects the fp32 file
    Row("SFT_KD_AT_D3C5@4X", None, "16x12, 4 coils, mask lines", "fp32", "named by the config message"),
    Row("teacher_d5c5@4x", '{"parameters": {"customconfig": "sft_kd_at_d3c5@4x", "config": "teacher/d5c5@4x"}}',
        "16x12, 4 coils, mask lines", "fp32", "named by parameters.customconfig"),
    Row("openrecon", '{"parameters": {"customconfig": "", "config": "teacher_d5c5@4x"}}',
        "16x12, 4 coils, mask lines", None, "parameters.config names 'teacher_d5c5@4x', which cannot reconstruct "
        "this scan: its mask samples 1 lines the scan did not acquire (kspace_encode_step_1 8)", error=True),
    Row("openrecon", None, "16x12, 4 coils, mask lines", None,
        "2 served models fit this scan (the config message 'openrecon' is generic): sft_kd_at_d3c5@4x, "
        "sft_kd_at_d3c5@4x.int8; name one with parameters.customconfig", error=True),
    Row("openrecon", None, "16x12, 4 coils, mask lines", "int8", "the default model (--default-model) among 2",
        default="sft_kd_at_d3c5@4x.int8"),
    Row("openrecon", None, "16x12, 4 coils, lines not known yet", None, "3 fit the header; waiting for the first "
        "slice's lines"),
    Row(GADGETRON, None, "20x12, 4 coils, mask lines", "large", "the only served model that fits the scan (no model "
        "named)", text=True),
    Row("invertcontrast", '{"parameters": {"customconfig": "foo"}}', "20x12, 4 coils, mask lines", "large",
        "parameters.customconfig 'foo' names no served model"),
    Row("invertcontrast", None, "16x12, 1 coil, mask lines + 2", None, "4 served models fit this scan (the config "
        "message 'invertcontrast' is generic): sft_kd_at_d3c5@4x, sft_kd_at_d3c5@4x.int8, teacher_d5c5@4x, real_d2c2",
        error=True),
    Row("default", None, "16x12, 4 coils, mask lines", None, "no served model fits this scan (the config message "
        "'default' is generic): the scan needs image grid 16x12, a mask within its 5 acquired lines, 4 coils (a "
        "2-channel model); served: real_d2c2 (16x12, 5 lines, 1-channel); large_d3c5 (20x12, 5 lines, 2-channel)",
        served=("real", "large"), error=True),
    Row(None, '{"parameters": {"customconfig": "real_d2c2"}}', "16x12, 4 coils, mask lines", None,
        "it is a 1-channel model and the scan has several coils", error=True),
    Row(None, None, "16x12, 4 coils, mask lines", "fp32", "the only served model that fits the scan (no model named)",
        served=("fp32",)),
    Row(None, '{"parameters": {"customconfig": "real_d2c2"}}', "16x12, 1 coil, mask lines + 2", "real",
        "named by parameters.customconfig"),
]


def request(row: Row) -> StreamRequest:
    base = StreamRequest(row.config, row.text)
    return base if row.parameters is None else base.with_parameters(row.parameters)


@pytest.mark.parametrize("row", TABLE, ids=[f"{index}" for index in range(len(TABLE))])
def test_selection_table(row: Row):
    models = [MODELS[key] for key in row.served]
    if row.error:
        with pytest.raises(SelectionError) as caught:
            select_model(models, request(row), SCANS[row.scan], row.default)
        assert row.says in str(caught.value)
        return
    selection = select_model(models, request(row), SCANS[row.scan], row.default)
    assert selection.model is (MODELS[row.chosen] if row.chosen else None)
    assert row.says in selection.reason
    assert len(selection.label) <= 64


def test_json_parameters_and_the_comparison_flag():
    assert json_parameters("not json") is None and json_parameters('{"parameters": 3}') is None
    assert json_parameters("[" * 100_000) is None  # too deep for the parser: not parameters, not a crash
    for value, wanted in [("true", True), ('"on"', True), ("1", True), ('"false"', False), ("0", False)]:
        parsed = StreamRequest().with_parameters(f'{{"parameters": {{"zerofilled": {value}}}}}')
        assert parsed.zero_filled is wanted, value
    assert StreamRequest("x", True).with_parameters("{}") is None
    assert StreamRequest(GADGETRON, True).names() == []
