"""`python -m hvd_alexnet report MODEL_DIR`: plots and a summary of a run, read
from its DLLogger file (MODEL_DIR/dllogger.json), written into MODEL_DIR/report/:

    loss_lr.png      loss and learning rate against step
    accuracy.png     top-1 and top-5 against epoch
    throughput.png   global images/s against step
    report.md        the run's parameters, final accuracy, throughput and time

A run that was resumed has several PARAMETER records; the last one is shown,
and a step logged twice (repeated after a restart) is plotted once, its last value.
"""

import io
import os

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from absl import flags  # noqa: E402

from hvd_alexnet import command, files, metrics_log  # noqa: E402
from hvd_alexnet.errors import UsageError  # noqa: E402

COLORS = ("#1f77b4", "#ff7f0e")  # first and second curve of each plot
SHOWN_PARAMETERS = ("data_dir", "ranks", "hosts", "global_batch", "batch_size",
                    "accumulate_steps", "epochs", "total_steps", "steps_per_epoch", "image_size",
                    "num_classes", "base_lr", "lr_schedule", "warmup_epochs", "precision",
                    "train_examples", "validation_examples")


def read_run(model_dir):
    """(last PARAMETER record's data, training points, validation points, final summary)."""
    path = os.path.join(model_dir, metrics_log.LOG_FILE)
    if not os.path.exists(path):
        raise UsageError(f"{path} not found: give the --model_dir of a training run")
    params, steps, epochs, summary = {}, {}, {}, {}
    for r in metrics_log.read(path):
        step, data = r.get("step"), r.get("data", {})
        if step == "PARAMETER":
            params = data
        elif r["type"] != "LOG":
            continue
        elif step == []:
            summary = data
        elif len(step) == 2 and "loss" in data:
            steps[step[1]] = data
        elif len(step) == 1 and "top1" in data:
            epochs[step[0] + 1] = data  # epochs counted from 1 on the plot
    if not steps:
        raise UsageError(f"{path} has no training steps yet")
    return params, sorted(steps.items()), sorted(epochs.items()), summary


def _plot(path, title, xlabel, curves, right=None, marker=None):
    """curves: [(label, xs, ys)] on the left axis; right: one more on a right axis."""
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    lines = []
    for color, (label, xs, ys) in zip(COLORS, curves):
        lines += ax.plot(xs, ys, color=color, label=label, linewidth=1.5, marker=marker,
                         markersize=4)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(", ".join(label for label, _, _ in curves))
    if right:
        label, xs, ys = right
        other = ax.twinx()
        lines += other.plot(xs, ys, color=COLORS[len(curves)], label=label, linewidth=1.5)
        other.set_ylabel(label)
    ax.legend(lines, [line.get_label() for line in lines], loc="upper center",
              bbox_to_anchor=(0.5, -0.15), ncol=len(lines), frameon=False)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png")
    plt.close(fig)
    files.write_atomic(path, png.getvalue())
    return path


def _value(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and len(v) > 8:
        return f"{v[:4]} ... ({len(v)} items)"
    return str(v)


def write(model_dir, out_dir=None):
    """Writes the plots and report.md; returns their paths."""
    params, steps, epochs, summary = read_run(model_dir)
    out_dir = out_dir or os.path.join(model_dir, "report")
    os.makedirs(out_dir, exist_ok=True)
    xs = [s for s, _ in steps]
    paths = [
        _plot(os.path.join(out_dir, "loss_lr.png"), "Training loss and learning rate", "step",
              [("loss", xs, [d["loss"] for _, d in steps])],
              right=("learning rate", xs, [d["learning_rate"] for _, d in steps])),
        _plot(os.path.join(out_dir, "throughput.png"), "Training throughput (all ranks)", "step",
              [("images/s", xs, [d["images_per_sec"] for _, d in steps])]),
    ]
    if epochs:
        es = [e for e, _ in epochs]
        paths.append(_plot(os.path.join(out_dir, "accuracy.png"), "Validation accuracy",
                           "epoch", [("top-1", es, [d["top1"] for _, d in epochs]),
                                     ("top-5", es, [d["top5"] for _, d in epochs])],
                           marker="o"))  # an epoch is a point; one epoch is one point
    lines = [f"# Run report: {os.path.abspath(model_dir)}", ""]
    if summary:
        lines += ["## Result", "", "| | |", "|---|---|"]
        for key in ("top1", "top5", "train_images_per_sec", "train_images_per_sec_per_rank",
                    "time_to_train_sec", "steps", "epochs_completed", "weights_digest"):
            if key in summary:
                lines.append(f"| {key} | {_value(summary[key])} |")
    else:
        last_step, last = steps[-1]
        lines += ["## Result", "", f"The run has not finished: last logged step {last_step}, "
                  f"loss {last['loss']:.4f}."]
    if epochs:
        lines += ["", "## Validation", "", "| epoch | top-1 | top-5 |", "|---|---|---|"]
        lines += [f"| {e} | {d['top1']:.4f} | {d['top5']:.4f} |"
                  for e, d in epochs]
    lines += ["", "## Parameters", "", "| parameter | value |", "|---|---|"]
    lines += [f"| {k} | {_value(params[k])} |" for k in SHOWN_PARAMETERS if k in params]
    lines += ["", "## Plots", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})"
                                     for p in paths]
    md = os.path.join(out_dir, "report.md")
    files.write_atomic(md, "\n".join(lines) + "\n")
    return paths + [md]


FLAGS = flags.FlagValues()
command.definers(FLAGS).string("out_dir", None, "Where to write (default: MODEL_DIR/report).")


def main(argv):
    """Plots (PNG) and a Markdown summary of a training run, from its
    dllogger.json: loss and learning rate against step, top-1/top-5 against
    epoch, images/s against step. Works on a run still in progress."""
    (model_dir,) = command.parse(FLAGS, argv, "report", main.__doc__, positional=("MODEL_DIR",))
    for path in write(model_dir, FLAGS.out_dir):
        print(path)
    return 0
