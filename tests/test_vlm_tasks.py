"""Task readers: VLMEvalKit TSV with base64 images built here, JSONL and CSV with image paths."""

from __future__ import annotations

import base64
import csv
import io
import json
import struct
import zlib

import pytest
import torch
from PIL import Image

from compressai_vlic.errors import ImageReadError, ImageTooLargeError
from compressai_vlic.vlm.tasks import TaskFileError, load_task, parse_task_spec


def _crop(img, h=48, w=64):
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top : top + h, left : left + w]


def _b64(img, fmt="JPEG") -> str:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, quality=90)
    return base64.b64encode(buf.getvalue()).decode()


def _write_tsv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def _bomb_png(width=100_000, height=100_000) -> bytes:
    """A valid PNG header declaring 10 gigapixels (a few dozen bytes on disk)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_pope_tsv_base64(tmp_path, photos):
    cat, rocket = _crop(photos["chelsea"]), _crop(photos["rocket"])
    path = _write_tsv(
        tmp_path / "POPE.tsv",
        ["index", "question", "answer", "category", "image"],
        [
            [0, "Is there a cat in the image?", "yes", "random", _b64(cat)],
            [1, "Is there a dog in the image?", "no", "adversarial", _b64(cat)],
            [2, "Is there a rocket in the image?", "Yes", "popular", _b64(rocket, "PNG")],
        ],
    )
    task = load_task(path)
    assert task.name == "POPE" and task.task_type == "yes_no" and len(task) == 3
    assert [it.answers for it in task.items] == [("yes",), ("no",), ("yes",)]
    assert task.items[1].category == "adversarial"
    image = task.items[2].load_image()
    assert image.shape == (3, 48, 64)
    expected = torch.from_numpy(rocket).permute(2, 0, 1).float() / 255  # PNG: lossless
    assert torch.equal(image, expected)
    assert task.items[0].load_image().shape == (3, 48, 64)  # JPEG decoded


def test_mmbench_tsv_options_hint_and_image_references(tmp_path, photos):
    coffee = _crop(photos["coffee"])
    path = _write_tsv(
        tmp_path / "MMBench_DEV_EN.tsv",
        ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image"],
        [
            [10, "What is in the cup?", "Look closely.", "coffee", "tea", "water", "nan", "A",
             "attribute", _b64(coffee)],
            [11, "What colour is the cup?", "nan", "white", "black", "", "", "A", "attribute",
             "10"],  # MMBench: the image of row 10
        ],
    )  # fmt: skip
    task = load_task(path)
    assert task.task_type == "multiple_choice"
    first, second = task.items
    assert first.options == {"A": "coffee", "B": "tea", "C": "water"}
    assert first.hint == "Look closely." and second.hint is None
    assert second.options == {"A": "white", "B": "black"}
    assert torch.equal(first.load_image(), second.load_image())


def test_seedbench_answer_must_be_an_option(tmp_path, photos):
    path = _write_tsv(
        tmp_path / "SEEDBench_IMG.tsv",
        ["index", "question", "A", "B", "C", "D", "answer", "category", "image"],
        [[1, "How many cats?", "1", "2", "3", "4", "E", "count", _b64(_crop(photos["chelsea"]))]],
    )
    with pytest.raises(TaskFileError, match=r"SEEDBench_IMG.tsv:2: answer 'E' is none of"):
        load_task(path)


def test_tsv_errors_are_typed_and_located(tmp_path, photos):
    good = _b64(_crop(photos["astronaut"]))
    missing = _write_tsv(tmp_path / "a.tsv", ["index", "question", "image"], [[0, "q?", good]])
    with pytest.raises(TaskFileError, match="column 'answer' is missing"):
        load_task(missing)
    bad_yes_no = _write_tsv(
        tmp_path / "b.tsv", ["index", "question", "answer", "image"], [[0, "q?", "maybe", good]]
    )
    with pytest.raises(TaskFileError, match="yes/no answer expected"):
        load_task(bad_yes_no, "yes_no")
    dangling = _write_tsv(
        tmp_path / "c.tsv", ["index", "question", "answer", "image"], [[0, "q?", "yes", "99"]]
    )
    with pytest.raises(TaskFileError, match="neither base64 nor the index"):
        load_task(dangling)
    dup = _write_tsv(
        tmp_path / "d.tsv",
        ["index", "question", "answer", "image"],
        [[0, "q?", "yes", good], [0, "q2?", "no", good]],
    )
    with pytest.raises(TaskFileError, match="index '0' appears more than once"):
        load_task(dup)
    with open(tmp_path / "e.tsv", "w") as f:
        f.write("index\tquestion\tanswer\timage\n0\tq?\tyes\n")
    with pytest.raises(TaskFileError, match=r"e\.tsv:2: fewer cells"):
        load_task(tmp_path / "e.tsv")


def test_broken_and_oversized_base64_images(tmp_path, monkeypatch):
    path = _write_tsv(
        tmp_path / "bad.tsv",
        ["index", "question", "answer", "image"],
        [
            [0, "q?", "yes", "!!!not base64!!!" * 8],
            [1, "q?", "no", base64.b64encode(b"not an image at all" * 10).decode()],
            [2, "q?", "no", base64.b64encode(_bomb_png()).decode()],
        ],
    )
    task = load_task(path)
    with pytest.raises(ImageReadError, match=r"bad.tsv:2 \(index 0\): the image field is not"):
        task.items[0].load_image()
    with pytest.raises(ImageReadError, match=r"index 1\): base64 image: not a readable image"):
        task.items[1].load_image()
    # the header declares 10 gigapixels: refused before any pixel is decoded
    with pytest.raises(ImageTooLargeError, match="100000x100000"):
        task.items[2].load_image()


def test_jsonl_and_csv_with_relative_paths(tmp_path, photos):
    folder = tmp_path / "set"
    (folder / "img").mkdir(parents=True)
    Image.fromarray(_crop(photos["coffee"])).save(folder / "img" / "coffee.png")
    rows = [
        {"id": "q1", "image": "img/coffee.png", "question": "What is this?",
         "answers": ["coffee"] * 8 + ["cup", "mug"]},
        {"id": "q2", "image": "img/coffee.png", "question": "Which drink?",
         "options": ["tea", "coffee"], "answer": "B"},
    ]  # fmt: skip
    (folder / "vqa.jsonl").write_text(json.dumps(rows[0]) + "\n\n")
    vqa = load_task(folder / "vqa.jsonl")
    assert vqa.task_type == "short_answer" and len(vqa.items[0].answers) == 10
    assert vqa.items[0].load_image().shape == (3, 48, 64)
    (folder / "mc.jsonl").write_text(json.dumps(rows[1]) + "\n")
    mc = load_task(folder / "mc.jsonl")
    assert mc.task_type == "multiple_choice" and mc.items[0].options == {"A": "tea", "B": "coffee"}

    with open(folder / "ocr.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "image", "question", "answer"])
        writer.writerow(["t1", "img/coffee.png", "What is written?", '["CAFE", "cafe"]'])
        writer.writerow(["t2", "img/missing.png", "What is written?", "EXIT"])
    ocr = load_task(folder / "ocr.csv", "ocr", name="ocrbench")
    assert ocr.name == "ocrbench" and ocr.items[0].answers == ("CAFE", "cafe")
    with pytest.raises(ImageReadError, match=r"ocr.csv:3 \(index t2\).*missing.png: no such file"):
        ocr.items[1].load_image()

    (folder / "broken.jsonl").write_text('{"image": "img/coffee.png", "question": "q", \n')
    with pytest.raises(TaskFileError, match=r"broken\.jsonl:1: not a JSON object"):
        load_task(folder / "broken.jsonl")
    (folder / "noanswer.jsonl").write_text('{"image": "img/coffee.png", "question": "q"}\n')
    with pytest.raises(TaskFileError, match="column 'answer' is missing"):
        load_task(folder / "noanswer.jsonl")


def test_task_specs():
    assert parse_task_spec("POPE.tsv") == (None, parse_task_spec("POPE.tsv")[1], "auto")
    name, path, kind = parse_task_spec("ocr=data/ocrbench.jsonl@ocr")
    assert (name, str(path), kind) == ("ocr", "data/ocrbench.jsonl", "ocr")
    assert parse_task_spec("a/b@c.tsv")[2] == "auto"  # '@' that names no task type is the path


def test_task_images_must_lie_under_the_task_folder(tmp_path, photos):
    from compressai_vlic.vlm.tasks import ImageOutsideRootError

    outside = tmp_path / "private.png"
    Image.fromarray(_crop(photos["coffee"])).save(outside)
    folder = tmp_path / "set"
    (folder / "img").mkdir(parents=True)
    Image.fromarray(_crop(photos["rocket"])).save(folder / "img" / "ok.png")
    (folder / "img" / "link.png").symlink_to(outside)
    for image in ("../private.png", str(outside), "img/../../private.png", "img/link.png"):
        row = {"id": "q", "image": image, "question": "What?", "answer": "x"}
        (folder / "t.jsonl").write_text(json.dumps(row) + "\n")
        with pytest.raises(ImageOutsideRootError, match=r"t\.jsonl:1: image .* outside the task"):
            load_task(folder / "t.jsonl")
        assert load_task(folder / "t.jsonl", allow_outside_root=True).items[0].load_image().shape
    _write_tsv(
        folder / "t.tsv",
        ["index", "question", "answer", "image_path"],
        [[0, "q?", "yes", str(outside)]],
    )
    with pytest.raises(ImageOutsideRootError, match="--allow-outside-root"):
        load_task(folder / "t.tsv")
    with open(folder / "t.csv", "w", newline="") as f:
        csv.writer(f).writerows(
            [["index", "image", "question", "answer"], ["1", "../private.png", "q", "a"]]
        )
    with pytest.raises(ImageOutsideRootError):
        load_task(folder / "t.csv")
    (folder / "fine.jsonl").write_text(
        json.dumps({"image": "img/./ok.png", "question": "q", "answer": "a"})
    )
    assert load_task(folder / "fine.jsonl").items[0].load_image().shape == (3, 48, 64)


def test_vlm_bench_cli_refuses_outside_images(tmp_path, photos, capsys):
    from compressai_vlic.cli.main import main

    Image.fromarray(_crop(photos["coffee"])).save(tmp_path / "private.png")
    (tmp_path / "set").mkdir()
    row = {"id": "q", "image": "../private.png", "question": "What?", "answer": "x"}
    (tmp_path / "set" / "t.jsonl").write_text(json.dumps(row) + "\n")
    argv = ["vlm-bench", "run", "--task", str(tmp_path / "set" / "t.jsonl"), "--model", "m",
            "--base-url", "http://127.0.0.1:9/v1", "--api-key-env", "", "--output-dir",
            str(tmp_path / "out")]  # fmt: skip
    assert main(argv) == 2  # refused before any image is copied or any request is made
    assert "outside the task file's folder" in capsys.readouterr().err
    assert not (tmp_path / "out" / "images").exists()
