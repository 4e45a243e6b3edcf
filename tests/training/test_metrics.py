"""metrics.jsonl and loss.png."""

from cgc.training.metrics import MetricsLog, plot, read_metrics


def test_records_append_and_a_resumed_run_drops_the_steps_it_repeats(tmp_path) -> None:
    log = MetricsLog(tmp_path)
    log.write({"step": 0, "val_loss": 5.5})
    for step in (1, 2, 3):
        log.write({"step": step, "loss": 5.0 - step, "lr": 1e-3, "grad_norm": 1.0})
    log.close()
    log = MetricsLog(tmp_path, resume_step=2)
    log.write({"step": 3, "loss": 1.5, "lr": 1e-3, "grad_norm": 0.5, "val_loss": 1.7})
    log.close()
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["loss"] == 1.5
    png = plot(tmp_path, "run: training and validation loss")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
