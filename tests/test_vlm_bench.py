"""The VLM benchmark end to end on real photos: HTTP through a loopback server process and a tiny
HF model saved and loaded from disk, JPEG/WebP and a VLIC codec, failures, resume, the CLI."""

from __future__ import annotations

import json
import sys
import types

import pytest
from PIL import Image

from compressai_vlic.errors import ConfigError
from compressai_vlic.evaluation import make_codec
from compressai_vlic.judges.encoding import array_digest
from compressai_vlic.testing.loopback_server import ServerScript, pair_key
from compressai_vlic.testing.tiny_vlm import build_tiny_vlm
from compressai_vlic.vlm.answerers import (
    AnswerRequest,
    CachedAnswerer,
    HFAnswerer,
    OpenAIAnswerer,
    answer_key,
)
from compressai_vlic.vlm.bench import UNCOMPRESSED, BenchSettings, run_vlm_bench
from compressai_vlic.vlm.tasks import load_task

SECRET = "sk-vlm-bench-7c1d-DO-NOT-LEAK"
KEY_ENV = "VLIC_TEST_VLM_KEY"
NAMES = ("astronaut", "chelsea", "coffee")


def _crop(img, h=48, w=64):
    top, left = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[top : top + h, left : left + w].copy()


@pytest.fixture(scope="module")
def crops(photos):
    return {name: _crop(photos[name]) for name in NAMES}


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, crops):
    """Three JSONL tasks over real photo crops (PNG files next to them)."""
    folder = tmp_path_factory.mktemp("vlm_tasks")
    for name, img in crops.items():
        Image.fromarray(img).save(folder / f"{name}.png")
    opts = {"A": "rocket", "B": "cat", "C": "cup"}
    mc = [("astronaut", "A"), ("chelsea", "B"), ("coffee", "A"), ("astronaut", "C")]
    lines = [
        {"id": f"m{i}", "image": f"{img}.png", "question": "What is shown?", "options": opts,
         "answer": ans}
        for i, (img, ans) in enumerate(mc)
    ]  # fmt: skip
    (folder / "mc.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    yn = [("astronaut", "yes"), ("chelsea", "no"), ("coffee", "yes")]
    lines = [
        {"id": f"y{i}", "image": f"{img}.png", "question": "Is there a person?", "answer": a}
        for i, (img, a) in enumerate(yn)
    ]
    (folder / "yn.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    vqa = [
        {"id": "v0", "image": "chelsea.png", "question": "What?",
         "answers": ["Answer: A"] * 3 + ["other"] * 7},
        {"id": "v1", "image": "coffee.png", "question": "What?", "answers": ["nope"]},
    ]  # fmt: skip
    (folder / "vqa.jsonl").write_text("".join(json.dumps(x) + "\n" for x in vqa))
    return folder


def _tasks(task_dir, names=("mc", "yn", "vqa")):
    return [load_task(task_dir / f"{n}.jsonl") for n in names]


@pytest.fixture(scope="module")
def vlic_codec():
    return make_codec("vlic@test")  # random weights, real VLIC bitstreams


def _http(server, **kw) -> OpenAIAnswerer:
    base = dict(timeout_s=5.0, max_attempts=2, backoff_base_s=0.01, backoff_max_s=0.05)
    return OpenAIAnswerer("loopback-vlm", base_url=server.base_url, api_key_env=KEY_ENV,
                          **{**base, **kw})  # fmt: skip


def _settings(**kw) -> BenchSettings:
    # PSNR only: the deep metrics' networks cost load time and are tested elsewhere
    base = {"progress": False, "quality_metrics": ["psnr"], "distribution_metrics": []}
    return BenchSettings(**{**base, **kw})


def _image_key(img) -> str:
    return pair_key([array_digest(img)])


@pytest.mark.slow
def test_http_backend_end_to_end_with_failures_and_rerun(server, task_dir, crops, tmp_path,
                                                          vlic_codec):  # fmt: skip
    out = tmp_path / "http"
    # the original coffee photo fails on every attempt (3 questions x 2 attempts: HTTP 500 and a
    # truncated JSON body); the three questions on the original chelsea photo get prose answers
    server.set_script(
        ServerScript(
            pairs={
                _image_key(crops["coffee"]): ["500", "malformed"] * 3,
                _image_key(crops["chelsea"]): ["wrong_format"] * 3,
            }
        )
    )
    codecs = [make_codec("jpeg@0.3,0.8"), make_codec("webp@0.3,0.8"), vlic_codec]
    notices: list[str] = []
    answerer = CachedAnswerer(_http(server), tmp_path / "cache.sqlite")
    result = run_vlm_bench(_tasks(task_dir), codecs, answerer, out, _settings(), notices.append)
    # coffee: 1 MC + 1 yes/no + 1 VQA item fail in the uncompressed condition only
    assert result.failed == 3
    assert any("3 answer(s) failed" in n and "gave up after 2 attempts" in n for n in notices)
    mc = result.row("mc", UNCOMPRESSED, "original")
    assert (mc.n, mc.expected, mc.unparsed) == (3, 4, 1)
    # the loopback VLM answers "Answer: A": right for m0 only (m1 got prose, m2 failed)
    assert mc.score == pytest.approx(1 / 3)
    yn = result.row("yn", UNCOMPRESSED, "original")
    assert (yn.n, yn.unparsed, yn.score) == (2, 2, 0.0)
    vqa = result.row("vqa", UNCOMPRESSED, "original")
    assert (vqa.n, vqa.score) == (1, 0.0)  # v0 got prose, v1 (coffee) failed
    for codec, point in [("jpeg", "0.3"), ("jpeg", "0.8"), ("webp", "0.8"), ("vlic-untrained", "test")]:  # fmt: skip
        row = result.row("mc", codec, point)
        assert row.complete and row.score == pytest.approx(0.5)  # m0 and m2 are "A"
        assert row.drop == pytest.approx(1 / 3 - 0.5)
        yn = result.row("yn", codec, point)
        assert yn.score == 0.0 and yn.unparsed == 3 and yn.extra["f1"] == 0.0
        vqa = result.row("vqa", codec, point)
        assert vqa.score == pytest.approx((0.9 + 0.0) / 2)  # hand-computed VQA accuracy
    # real bpp from real bitstreams: the mean of the compare rows of the task's images
    coded = [json.loads(x) for x in (out / "codecs" / "rows.jsonl").read_text().splitlines()]
    jpeg = [r for r in coded if r["codec"] == "jpeg" and r["rate_point"] == "0.3"]
    assert len(jpeg) == 3 and all(r["num_bytes"] > 100 for r in jpeg)
    assert result.row("mc", "jpeg", "0.3").bpp == pytest.approx(sum(r["bpp"] for r in jpeg) / 3)
    assert result.row("vqa", "vlic-untrained", "test").bpp > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed_answers"] == 3 and len(summary["rows"]) == 3 * 6
    assert (out / "summary.csv").read_text().count("\n") == 1 + 3 * 6
    assert (out / "rate_accuracy.png").stat().st_size > 10_000
    assert {b["test"] for b in json.loads((out / "bd.json").read_text())} == {
        "webp",
        "vlic-untrained",
    }
    assert answerer.stored == 54 - 3  # failures are never cached

    # rerun with a healthy server: only the three failed questions are asked
    server.set_script(ServerScript())
    answerer = CachedAnswerer(_http(server), tmp_path / "cache.sqlite")
    again = run_vlm_bench(_tasks(task_dir), codecs, answerer, out, _settings())
    assert server.stats()["requests"] == 3 and again.failed == 0
    mc = again.row("mc", UNCOMPRESSED, "original")
    assert (mc.n, mc.unparsed, mc.score) == (4, 1, pytest.approx(0.5))
    assert again.row("mc", "jpeg", "0.3").drop == pytest.approx(0.0)
    # the key is never written anywhere
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET.encode() not in (tmp_path / "cache.sqlite").read_bytes()

    # a fresh output folder with the same cache asks nothing
    server.set_script(ServerScript())
    cached = CachedAnswerer(_http(server), tmp_path / "cache.sqlite")
    third = run_vlm_bench(_tasks(task_dir), codecs, cached, tmp_path / "http2", _settings())
    assert server.stats()["requests"] == 0 and cached.hits == 54
    assert [r.score for r in third.rows] == [r.score for r in again.rows]


class _Interrupt:
    """Passes the first ``calls`` batches through, then dies like Ctrl-C."""

    def __init__(self, inner, calls: int) -> None:
        self.inner, self.calls = inner, calls
        self.backend, self.name = inner.backend, inner.name

    def cache_identity(self):
        return self.inner.cache_identity()

    def answer_batch(self, requests, on_result=None):
        if self.calls <= 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.inner.answer_batch(requests, on_result)

    def close(self):
        self.inner.close()


def test_resume_after_an_interrupt(server, task_dir, tmp_path):
    out = tmp_path / "resume"
    server.set_script(ServerScript())
    tasks = _tasks(task_dir, ("mc", "yn"))
    codecs = [make_codec("jpeg@q20,q80")]
    total = 7 * 3
    with pytest.raises(KeyboardInterrupt):
        run_vlm_bench(tasks, codecs, _Interrupt(_http(server), 2), out, _settings(chunk_size=5))
    lines = (out / "answers.jsonl").read_text().splitlines()
    assert len(lines) == 10
    with open(out / "answers.jsonl", "a") as f:
        f.write('{"answerer": "torn line of a killed wri')  # kill -9 mid-write
    server.set_script(ServerScript())
    result = run_vlm_bench(tasks, codecs, _http(server), out, _settings(chunk_size=5))
    assert server.stats()["requests"] == total - 10  # nothing answered is asked again
    assert all(r.complete for r in result.rows)
    rows = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()[:10]]
    keys = {(r["task"], r["index"], r["codec"], r["rate_point"]) for r in rows}
    assert len(keys) == 10
    # the same scores as an uninterrupted run
    fresh = run_vlm_bench(tasks, codecs, _http(server), tmp_path / "fresh", _settings())
    assert [(r.task, r.codec, r.rate_point, r.score) for r in fresh.rows] == [
        (r.task, r.codec, r.rate_point, r.score) for r in result.rows
    ]


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"), seed=0)


def test_hf_backend_end_to_end(tiny_vlm, task_dir, tmp_path, vlic_codec, one_torch_thread):
    tasks = _tasks(task_dir, ("mc", "yn"))
    codecs = [make_codec("jpeg@q20,q80"), vlic_codec]
    answerer = HFAnswerer(str(tiny_vlm), batch_size=4, max_new_tokens=3)
    assert type(answerer.model).__name__ == "LlavaForConditionalGeneration"
    cached = CachedAnswerer(answerer, tmp_path / "cache.sqlite")
    result = run_vlm_bench(tasks, codecs, cached, tmp_path / "hf", _settings())
    assert result.failed == 0 and len(result.rows) == 2 * 4
    assert all(r.complete and 0.0 <= r.score <= 1.0 for r in result.rows)
    assert answerer.stats.answered == 7 * 4 and cached.stored == 7 * 4
    low, high = result.row("mc", "jpeg", "q20"), result.row("mc", "jpeg", "q80")
    assert 0 < low.bpp < high.bpp
    rows = [json.loads(x) for x in (tmp_path / "hf" / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 28 and all(isinstance(r["answer"], str) for r in rows)
    # batched answers equal one-by-one answers (left padding, greedy decoding)
    request = AnswerRequest(load_task(task_dir / "mc.jsonl").items[0].load_image(), "Which?")
    alone = answerer.answer_batch([request])[0].text
    batch = answerer.answer_batch([request, AnswerRequest(request.image[:, :40], "Other?")])
    assert batch[0].text == alone


class _FakeHandle:
    """Stands in for the adaptor handle: records every condition it is set to."""

    adaptor_id = "fake-adaptor-01"

    def __init__(self) -> None:
        self.calls: list[tuple[str, int]] = []

    def set_condition(self, codec_name: str, rate_level: int) -> None:
        self.calls.append((codec_name, rate_level))


def test_hf_adaptor_condition_before_each_generation(tiny_vlm, task_dir, tmp_path, monkeypatch,
                                                     one_torch_thread):  # fmt: skip
    handles: list[_FakeHandle] = []
    fake = types.ModuleType("compressai_vlic.vlm.adaptor")

    def load_adaptor(model, path):
        assert type(model).__name__ == "LlavaForConditionalGeneration" and path == "ad.safetensors"
        handles.append(_FakeHandle())
        return handles[-1]

    fake.load_adaptor = load_adaptor
    monkeypatch.setitem(sys.modules, "compressai_vlic.vlm.adaptor", fake)
    answerer = HFAnswerer(str(tiny_vlm), batch_size=2, max_new_tokens=2, adaptor="ad.safetensors")
    assert answerer.cache_identity()["adaptor"] == "fake-adaptor-01"
    generated: list[tuple[str, int]] = []
    real_generate = answerer.model.generate

    def spy(*args, **kwargs):
        generated.append(handles[0].calls[-1])  # the condition in force for this generation
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(answerer.model, "generate", spy)
    tasks = _tasks(task_dir, ("mc",))
    run_vlm_bench(tasks, [make_codec("jpeg@q20,q80")], answerer, tmp_path / "ad", _settings())
    # 4 items per condition in batches of 2, each batch set to its own codec and level
    assert generated == [("uncompressed", 0)] * 2 + [("jpeg", 0)] * 2 + [("jpeg", 1)] * 2
    image = tasks[0].items[0].load_image()
    identity = answerer.cache_identity()
    assert answer_key("d", "p", identity, ("jpeg", 0)) != answer_key(
        "d", "p", identity, ("jpeg", 1)
    )
    base = {**identity, "adaptor": None}
    assert answer_key("d", "p", base, ("jpeg", 0)) == answer_key("d", "p", base, ("jpeg", 1))
    assert image.shape == (3, 48, 64)

    class Rejecting(_FakeHandle):
        def set_condition(self, codec_name: str, rate_level: int) -> None:
            if codec_name != "uncompressed":
                raise ConfigError(f"unseen codec {codec_name!r}")

    answerer.handle = Rejecting()
    with pytest.raises(ConfigError, match="unseen codec 'webp'"):  # an error, not failed answers
        run_vlm_bench(tasks, [make_codec("webp@q50")], answerer, tmp_path / "ad2", _settings())


def test_cli_run_and_gaps(server, task_dir, tmp_path, capsys):
    from compressai_vlic.cli.main import main

    server.set_script(ServerScript())
    out = tmp_path / "cli"
    argv = ["vlm-bench", "run", "--task", f"choice={task_dir / 'mc.jsonl'}",
            "--codec", "jpeg@q20,q80", "--codec", "webp@q20,q80", "--backend", "openai",
            "--model", "loopback", "--base-url", server.base_url, "--api-key-env", KEY_ENV,
            "--no-progress", "--quality-metrics", "psnr", "--distribution-metrics",
            "-o", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| choice | accuracy | jpeg | q20 |" in printed
    assert "BD of the task score" in printed and "BD-metric vs uncompressed" in printed
    assert SECRET not in printed
    rows = json.loads((out / "summary.json").read_text())["rows"]
    assert {(r["codec"], r["rate_point"]) for r in rows} == {
        ("uncompressed", "original"), ("jpeg", "q20"), ("jpeg", "q80"), ("webp", "q20"),
        ("webp", "q80"),
    }  # fmt: skip
    argv = ["vlm-bench", "gaps", "--base", str(out), "--adapted", str(out), "-o",
            str(tmp_path / "gaps")]  # fmt: skip
    assert main(argv) == 0
    assert "generalisation gap" in capsys.readouterr().out
    data = json.loads((tmp_path / "gaps" / "gaps.json").read_text())
    assert len(data["rows"]) == 4 and all(r["generalisation_gap"] == 0 for r in data["rows"])
    assert data["loss_type"] == "score" and len(data["bd"]) == 2  # BD form per codec
    assert all(r["bd_generalisation_gap"] == 0 for r in data["bd"])
    missing = tmp_path / "missing.tsv"
    assert main(["vlm-bench", "run", "--task", str(missing), "--model", "m", "-o", str(out)]) == 2
    assert "missing.tsv: no such task file" in capsys.readouterr().err
