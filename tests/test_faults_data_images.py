"""Images other than 8-bit (issue 21 item 3): a 16-bit grayscale PNG is converted exactly to 8 bits
(today PIL clips it to an almost white image), 16-bit colour keeps its high byte with a warning
saying so, and a float TIFF is refused with its range and how to convert it (today: almost
black). Through the reader, the training mapper and ``tools/demo.py``."""

import logging
import os

import cv2
import numpy as np
import pytest
from detectron2.data import detection_utils
from PIL import Image

from detr_d2.data.dataset_mappers.detr_panoptic_dataset_mapper import read_image_checked
from tests.utils.configs import tiny_detr_cfg
from tests.utils.scripts import load_script


def _gray16(path, values):
    Image.fromarray(values.astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    return str(path)


def test_16_bit_grayscale_png_is_converted_exactly_and_said(tmp_path, caplog):
    values = np.linspace(0, 65535, 40 * 30).reshape(30, 40).astype(np.uint16)
    path = _gray16(tmp_path / "g16.png", values)
    # What Detectron2's read_image gives (PIL clips to 255): the white image of the report.
    assert (detection_utils.read_image(path, format="BGR") == 255).mean() > 0.99
    with caplog.at_level(logging.WARNING):
        image = read_image_checked(path, "BGR")
    expected = np.round(values.astype(np.float64) * 255 / 65535).astype(np.uint8)
    assert image.shape == (30, 40, 3) and image.dtype == np.uint8
    for c in range(3):
        assert np.array_equal(image[:, :, c], expected)
    assert "16-bit grayscale" in caplog.text and "v8 = round(v16 * 255 / 65535)" in caplog.text
    assert path in caplog.text


def test_16_bit_grayscale_keeps_exif_orientation(tmp_path):
    values = np.arange(6 * 4, dtype=np.uint16).reshape(4, 6) * 2000
    path = str(tmp_path / "rotated.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 270 on read, as Detectron2 does for 8-bit images
    Image.fromarray(values).save(path, exif=exif)
    image = read_image_checked(path, "RGB")
    assert image.shape == (6, 4, 3)
    expected = np.rot90((values.astype(np.uint32) * 255 + 32767) // 65535, k=-1)
    assert np.array_equal(image[:, :, 0], expected)


def test_16_bit_colour_png_states_the_high_byte_conversion(tmp_path, caplog):
    values = np.random.default_rng(0).integers(0, 65536, (8, 9, 3)).astype(np.uint16)
    path = str(tmp_path / "c16.png")
    cv2.imwrite(path, values)  # BGR order
    with caplog.at_level(logging.WARNING):
        image = read_image_checked(path, "BGR")
    assert np.array_equal(image, (values >> 8).astype(np.uint8))
    assert "16 bits per channel" in caplog.text and "v16 >> 8" in caplog.text


@pytest.mark.parametrize("scale", [1.0, 1000.0])
def test_float_tiff_is_refused_with_range_and_conversion(tmp_path, scale):
    values = (np.random.default_rng(1).random((16, 16)) * scale).astype(np.float32)
    path = str(tmp_path / "f.tif")
    Image.fromarray(values).save(path)
    with pytest.raises(ValueError) as e:
        read_image_checked(path, "BGR")
    msg = str(e.value)
    assert path in msg and "(file_name)" in msg and "floating-point image" in msg
    assert f"{values.max():.4g}" in msg and "astype(np.uint8)" in msg


def test_32_bit_integer_image_out_of_16_bit_range_is_refused(tmp_path):
    path = str(tmp_path / "i32.tif")
    Image.fromarray(np.full((4, 4), 70000, dtype=np.int32)).save(path)
    with pytest.raises(ValueError, match=r"values in \[70000, 70000\], outside 0..65535"):
        read_image_checked(path, "BGR")


def test_8_bit_images_are_read_as_detectron2_reads_them(tmp_path):
    rng = np.random.default_rng(2)
    gray = str(tmp_path / "g.png")
    Image.fromarray(rng.integers(0, 256, (5, 7), dtype=np.uint8)).save(gray)
    colour = str(tmp_path / "c.jpg")
    cv2.imwrite(colour, rng.integers(0, 256, (5, 7, 3), dtype=np.uint8))
    for path in (gray, colour):
        for fmt in ("BGR", "RGB"):
            assert np.array_equal(
                read_image_checked(path, fmt), detection_utils.read_image(path, format=fmt)
            )


def test_demo_on_16_bit_png_and_float_tiff(tmp_path, capsys):
    """The demo draws the converted image (not a white one) and names the refused TIFF in its
    one ``error:`` line."""
    cfg = tiny_detr_cfg(num_classes=6)
    cfg.DATASETS.TEST = ("detr_quickstart_val",)
    cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST = 64, 96
    cfg.MODEL.WEIGHTS = ""
    yaml_path = tmp_path / "tiny.yaml"
    yaml_path.write_text(cfg.dump())
    values = np.tile(np.linspace(0, 30000, 64), (48, 1))
    os.makedirs(tmp_path / "in")
    gray = _gray16(tmp_path / "in" / "g16.png", values)
    tiff = str(tmp_path / "in" / "f.tif")
    Image.fromarray(np.zeros((48, 64), np.float32)).save(tiff)
    out = tmp_path / "out"
    demo = load_script("demo")
    rc = demo.main(["--config-file", str(yaml_path), "--input", gray, tiff, "--output", str(out)])
    err = capsys.readouterr().err
    assert rc == 1 and f"error: skipped 1 unreadable image(s): {tiff}" in err
    error_line = next(line for line in err.splitlines() if line.startswith("error: skipped"))
    assert "floating-point image" in err and "g16.png" not in error_line
    assert os.listdir(out) == ["g16_panoptic.jpg"]
    overlay = cv2.imread(str(out / "g16_panoptic.jpg"))
    assert overlay.mean() < 200  # not the almost white image of the report
