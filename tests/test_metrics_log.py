from hvd_alexnet import metrics_log


def test_a_line_cut_by_a_killed_job_does_not_spoil_the_next_run(tmp_path):
    path = str(tmp_path / "dllogger.json")
    log = metrics_log.MetricsLog(path, stdout=None)
    log.log([0, 1], {"loss": 2.5})
    log.close()
    with open(path, "a") as f:
        f.write('DLLL {"timestamp": "17')  # the job died here
    log = metrics_log.MetricsLog(path, stdout=None)
    log.log([0, 2], {"loss": 2.0})
    log.close()
    assert [r["step"] for r in metrics_log.read(path)] == [[0, 1], [0, 2]]


def test_other_ranks_write_nothing(tmp_path):
    log = metrics_log.MetricsLog(str(tmp_path / "dllogger.json"), enabled=False)
    log.log([0, 1], {"loss": 1.0})
    assert not (tmp_path / "dllogger.json").exists()
