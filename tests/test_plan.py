"""The scaling model, on cases worked by hand."""

import pytest

from hvd_alexnet.tools import costs, plan

# AlexNet at 227x227, 1000 classes, multiply-accumulates per layer (output
# positions x kernel size): conv1 55*55*(11*11*3*64), conv2 27*27*(5*5*64*192),
# conv3 13*13*(3*3*192*384), conv4 13*13*(3*3*384*384), conv5 13*13*(3*3*384*256),
# fc6 9216*4096, fc7 4096*4096, fc8 4096*1000.
MACS = (3025 * 23232 + 729 * 307200 + 169 * 663552 + 169 * 1327104 + 169 * 884736
        + 37748736 + 16777216 + 4096000)


def test_model_costs_count_every_layer():
    flops, params = costs.model_costs(227, 1000)
    assert flops == 2 * MACS
    assert params == 61_838_248
    assert MACS == 838_788_800  # 1.68 GFLOP forward, 5.03 GFLOP per trained image


def test_ring_allreduce_time_by_hand():
    # 8 ranks, 1 GB, 10 GB/s, no latency: 2 * 7/8 * 0.1 s = 0.175 s
    assert costs.ring_seconds(8, 1e9, 10e9, 0) == pytest.approx(0.175)
    # latency: 2 * 7 steps of 10 us = 0.14 ms more
    assert costs.ring_seconds(8, 1e9, 10e9, 10e-6) == pytest.approx(0.17514)
    assert costs.ring_seconds(1, 1e9, 10e9, 10e-6) == 0.0
    # 2 ranks move the whole buffer once each way: 2 * 1/2 * bytes / bw
    assert costs.ring_seconds(2, 4e8, 2e9, 0) == pytest.approx(0.2)


def test_step_overlaps_the_allreduce_with_the_backward_pass():
    # 1 GFLOP forward per image, batch 10, 1 TFLOP/s: forward 10 ms, backward 20 ms
    fwd, bwd, comm, t = plan.step(2, 10, 1e9, 4e7, 1e12, 1e9, 0)  # all-reduce 40 ms
    assert (fwd, bwd, comm) == pytest.approx((0.01, 0.02, 0.04))
    assert t == pytest.approx(0.05)  # forward + the longer of backward and all-reduce
    fwd, bwd, comm, t = plan.step(2, 10, 1e9, 1e7, 1e12, 1e9, 0)  # all-reduce 10 ms: hidden
    assert t == pytest.approx(0.03)


def test_batch_that_hides_the_allreduce():
    # all-reduce 40 ms, backward = 2 GFLOP per image at 1 TFLOP/s = 2 ms per image: 20 images
    assert plan.hiding_batch(0.04, 1e9, 1e12) == 20
    assert plan.hiding_batch(0.0, 1e9, 1e12) == 1


def test_cli_prints_the_table_and_the_reference(capsys):
    assert plan.main(["--accelerators=1,8,64"]) == 0
    out = capsys.readouterr().out
    assert out.count("| fp32 |") == 3 and out.count("| fp16 |") == 3
    assert "1,833.9 images/s on 8 accelerators" in out and "3.3 GB/s ring" in out


def test_two_hosts_from_a_measured_rate_and_link_by_hand():
    # One rank: 32 images in 1.0 s (forward 1/3 s, backward 2/3 s). 1e8 bytes of
    # gradients over 100 MB/s between 2 hosts: 2 * 1/2 * 1e8 / 1e8 = 1 s > backward.
    t, ips = plan.two_hosts(32.0, 32, 1e8, 1e8, 0)
    assert t == pytest.approx(1 / 3 + 1.0) and ips == pytest.approx(64 / (4 / 3))
    # A fast link hides it: the step is one rank's, twice the images.
    t, ips = plan.two_hosts(32.0, 32, 1e8, 1e10, 1e-3)
    assert t == pytest.approx(1.0) and ips == pytest.approx(64.0)
    # Without overlap the all-reduce follows the whole step: 1 s + 1 s.
    t, ips = plan.two_hosts(32.0, 32, 1e8, 1e8, 0, overlap=False)
    assert t == pytest.approx(2.0) and ips == pytest.approx(32.0)


def test_cli_predicts_two_hosts_from_measurements(capsys):
    # AlexNet's 61,838,248 parameters: 247.4 MB fp32 over 1000 Mbit/s (125 MB/s) take
    # 1.979 s; with a measured 32 images/s (1 s steps) the step is 1/3 + 1.979 s.
    assert plan.main(["--measured_images_per_sec=32", "--link_mbit=1000",
                      "--link_latency_us=0"]) == 0
    out = capsys.readouterr().out
    fp32 = 61_838_248 * 4 / 125e6
    assert f"| fp32 | {fp32 * 1e3:.0f} | {(1 / 3 + fp32) * 1e3:.0f} | " \
           f"{64 / (1 / 3 + fp32):.1f} |" in out, out
    assert f"| fp16 | {fp32 / 2 * 1e3:.0f} |" in out


# --- plan --hosts: the step simulated layer by layer (plan_cluster.py) -------------

from hvd_alexnet.tools import plan_cluster  # noqa: E402


def test_layer_costs_are_the_model_costs_by_layer():
    layers = costs.layer_costs(227, 1000)
    assert [p for _, p in layers] == [23296, 307392, 663936, 1327488, 884992, 37752832,
                                      16781312, 4097000]
    assert sum(f for f, _ in layers) == 2 * MACS
    assert plan_cluster.backward_order(227, 1000)[0] == (4 * 4096000, 4097000)  # fc8 first


def test_a_buffer_starts_when_its_gradients_are_ready_and_the_link_is_free():
    per_100_bytes = lambda b: b / 100  # noqa: E731  1 s per 100 bytes
    # One layer: backward 1 s, then its 100 bytes take 1 s: 0.5 + 1 + 1.
    assert plan_cluster.simulate([(1.0, 100)], 0.5, per_100_bytes, 1000, 0) == pytest.approx(2.5)
    # 300 bytes ready at 0.1 s (3 s on the link), 100 more at 1.1 s: the second
    # buffer waits for the link (3.1 s) and ends at 4.1 s, after the backward pass.
    assert plan_cluster.simulate([(0.1, 300), (1.0, 100)], 0.0, per_100_bytes, 1000,
                                 0) == pytest.approx(4.1)
    # Hidden: 1 byte after a long backward layer ends long before it.
    assert plan_cluster.simulate([(0.1, 1), (5.0, 1)], 0.0, per_100_bytes, 1000,
                                 0) == pytest.approx(5.1 + 0.01)


def test_the_cycle_fuses_what_is_ready_and_saves_a_latency():
    comm = lambda b: 0.01 + b / 100  # noqa: E731  10 ms latency per buffer
    # No cycle: the first gradient goes alone at 0.1 s (1.01 s), the second after it.
    assert plan_cluster.simulate([(0.1, 100), (0.1, 100)], 0.0, comm, 1000,
                                 0) == pytest.approx(0.1 + 1.01 + 1.01)
    # A 0.25 s cycle: both are ready at the first tick, one buffer: 0.25 + 2.01.
    assert plan_cluster.simulate([(0.1, 100), (0.1, 100)], 0.0, comm, 1000,
                                 0.25) == pytest.approx(2.26)
    # A threshold of 150 bytes keeps them apart even then: 0.25 + 1.01 + 1.01.
    assert plan_cluster.simulate([(0.1, 100), (0.1, 100)], 0.0, comm, 150,
                                 0.25) == pytest.approx(2.27)


def test_accumulated_gradients_go_after_all_micro_batches():
    # Everything ready at 4 s (K micro-batches computed), 200 bytes in one buffer: 4 + 2.
    assert plan_cluster.simulate([(1.0, 100), (1.0, 100)], 0.0, lambda b: b / 100, 1000, 0,
                                 start_after=4.0) == pytest.approx(6.0)


def test_hierarchical_allreduce_by_hand():
    # 2 hosts x 4 GPUs, 8 GB: within a host 2 * 3/4 * 8e9 / 1e10 = 1.2 s; between the
    # hosts the host's link carries 2 * 1/2 * 8e9 bytes at 1e9 B/s = 8 s.
    assert plan_cluster.hierarchical_seconds(2, 4, 8e9, (1e10, 0), (1e9, 0)) == pytest.approx(9.2)
    # Latencies: 2 * 3 steps within (1 us), 2 * 1 between (1 ms).
    assert plan_cluster.hierarchical_seconds(2, 4, 8e9, (1e10, 1e-6), (1e9, 1e-3)) == \
        pytest.approx(9.2 + 6e-6 + 2e-3)


def test_plan_names_the_settings_for_a_stated_cluster(capsys):
    assert plan.main(["--hosts=8", "--per_host=8", "--inter_gbps=12.5"]) == 0
    out = capsys.readouterr().out
    assert "8 hosts x 8 GPUs = 64" in out
    for setting in ("--fp16_allreduce |", "--batch_size 128", "--accumulate_steps 4",
                    "--fusion_threshold_mb 0 (fusion off)", "HOROVOD_HIERARCHICAL_ALLREDUCE=1"):
        assert setting in out, setting
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in out.splitlines()
            if line.startswith("| ") and "ms" not in line and "---" not in line}
    efficiency = {name: float(cells[4]) for name, cells in rows.items()}
    base = next(e for name, e in efficiency.items() if name.startswith("baseline"))
    # At 12.5 GB/s AlexNet's 247 MB of gradients are not hidden behind batch 32's
    # backward pass: halving the bytes must help, and so must a 4x larger batch.
    assert base < efficiency["--fp16_allreduce"] < 1.0
    assert efficiency["--batch_size 128 (if it fits in memory)"] > efficiency["--fp16_allreduce"]
    assert "Best efficiency:" in out
