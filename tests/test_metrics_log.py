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


def test_a_run_read_back_across_ranks_that_were_rank_0(tmp_path):
    assert metrics_log.run_records(str(tmp_path)) == []  # before the first record
    path = str(tmp_path / metrics_log.LOG_FILE)
    for steps in ([1, 2], [3]):  # a rank 0, then the rank 0 after a change of ranks
        log = metrics_log.MetricsLog(path, stdout=None)
        log.metadata("loss", {})  # not a LOG record: left out
        for step in steps:
            log.log([0, step], {"loss": 1.0 / step})
        log.log([], {"steps": steps[-1]})
        log.close()
    assert [r["step"] for r in metrics_log.run_records(str(tmp_path))] == [
        [0, 1], [0, 2], [], [0, 3], []]
    assert metrics_log.run_summary(str(tmp_path)) == {"steps": 3}
