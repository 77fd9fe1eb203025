"""train/tracking.py: metrics.csv as the run writes it, also across a resume."""

from dronseg_edge.train.tracking import MetricsLog


def test_a_resumed_log_writes_the_earlier_rows_as_they_were(tmp_path):
    # --val-at-start's epoch 0 row has no lr or train_loss: a resume wrote those cells back as "nan"
    log = MetricsLog(tmp_path, tensorboard=False)
    log.log({"epoch": 0, "step": 0, "val_loss": 3.25})
    log.log({"epoch": 1, "step": 4, "lr": 0.001, "train_loss": 2.5, "val_loss": 2.75})
    uninterrupted = (tmp_path / "metrics.csv").read_text()
    assert uninterrupted.splitlines()[1] == "0,0,,,3.25"
    resumed = MetricsLog(tmp_path, tensorboard=False)
    resumed.log({"epoch": 1, "step": 4, "lr": 0.001, "train_loss": 2.5, "val_loss": 2.75})
    assert (tmp_path / "metrics.csv").read_text() == uninterrupted


def test_a_cell_that_is_no_number_is_kept_as_written(tmp_path):
    (tmp_path / "metrics.csv").write_text("epoch,step,note\n1,4,lr warm-up\n")  # a column the user added
    MetricsLog(tmp_path, tensorboard=False).log({"epoch": 2, "step": 8})
    assert (tmp_path / "metrics.csv").read_text().splitlines() == ["epoch,step,note", "1,4,lr warm-up", "2,8,"]
