"""The GPU benchmark's end-to-end job (bench/bench_gpu.py, section e2e) runs against today's
job recipe: the benchmark is run only where a GPU is lent, so a recipe change that breaks
it must show here, on the CPU, not on the first GPU machine."""

from __future__ import annotations

from bench.bench_gpu import one_job
from heygem_ray import media
from heygem_ray.config import RenderConfig
from heygem_ray.worker import ModelWorker
from tests.helpers.media import make_excerpt


def test_the_e2e_job_renders_and_reports_its_figures(tmp_path, examples) -> None:
    audio = tmp_path / "speech.wav"
    make_excerpt(examples / "lesson1.wav", audio, seconds=1)
    cfg = RenderConfig(pack="warp", chunk_frames=16, batch_size=8)
    worker = ModelWorker(cfg, tmp_path / "engines")
    try:
        cold = one_job(worker, cfg, examples / "presenter.mp4", audio, tmp_path / "cache", tmp_path)
        warm = one_job(worker, cfg, examples / "presenter.mp4", audio, tmp_path / "cache", tmp_path)
    finally:
        worker.close()
    assert cold["status"] == "ok" and warm["status"] == "ok", (cold, warm)
    assert (cold["template_cached"], warm["template_cached"]) == (False, True)
    assert cold["frames"] == warm["frames"] == 25
    assert cold["decoder"] == warm["decoder"] == media.pick_decoder(media.probe_video(examples / "presenter.mp4"))
    assert cold["encoder"] == warm["encoder"] == media.pick_encoder("auto")  # cpu and libx264 here
    assert cold["decoder_note"] == warm["decoder_note"] == ""  # the CPU was picked: nothing fell back
    for row in (cold, warm):
        assert 0 < row["model_s"] < row["wall_s"] and 0 < row["cpu_share"] < 1, row
        assert row["cpu_side_core_s_per_frame"] > 0 and row["est_fps_per_gpu"] > 0, row
