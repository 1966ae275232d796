"""Elastic training (--elastic): the job goes on when a host is lost, and grows
when one comes back, without a restart.

    bin/run_train_alexnet_elastic.sh     # horovodrun --min-np/--max-np and a
                                         # discovery script reading a hosts file

Horovod's elastic mode (Gloo) re-forms the ranks after each change of
membership and calls the trainer's function again; what moves across the
change is a `Committed` state, copied to host memory every
--elastic_commit_every steps and at each pause. On a failure the survivors roll
back to their last commit; rank 0's copy is broadcast to every rank (a new one
included) before the trainer goes on.
"""

import os

import horovod.tensorflow as hvd  # HVD
import tensorflow as tf
from horovod.common.elastic import ObjectState  # HVD
from horovod.common.exceptions import HorovodInternalError  # HVD

from hvd_alexnet import distributed
from hvd_alexnet.errors import UsageError


def check_launch():
    """--elastic needs horovodrun's elastic driver; plain mpirun has none."""
    if os.environ.get("HOROVOD_ELASTIC") != "1":
        raise UsageError("--elastic needs horovodrun's elastic mode (horovodrun --min-np N "
                         "--max-np M --host-discovery-script SCRIPT ...): run it with "
                         "bin/run_train_alexnet_elastic.sh, or drop --elastic")


# Not hvd.elastic.TensorFlowState: in Horovod 0.28.1 under TF2 its constructor runs
# a variable broadcast at once (a collective before the job has joined) and its
# sync() broadcasts only with a TF1 session, so a rank that joins after a change
# of hosts would keep its own initial weights. Committed broadcasts at each sync.
class Committed(ObjectState):
    """The variables (weights, optimizer slots and step, loss scale) and the
    run's position: `examples_seen`, `ranks` (the job's size at the commit) and
    `commits`. commit_at() copies them to host memory and raises
    HostsUpdatedInterrupt on every rank when the hosts changed."""

    def __init__(self, variables):
        self.variables = variables
        self._values = [v.numpy() for v in variables]
        super().__init__(bcast_object=hvd.broadcast_object, get_rank=hvd.rank,  # HVD
                         examples_seen=0, ranks=0, commits=0)

    @property
    def fresh(self):
        """No commit yet: the job starts from disk (a checkpoint, or nothing)."""
        return self.commits == 0

    def save(self):
        self._values = [v.numpy() for v in self.variables]
        super().save()

    def restore(self):
        """Back to the last commit (a rank failed somewhere)."""
        for variable, value in zip(self.variables, self._values):
            variable.assign(value)
        super().restore()

    def sync(self):
        """Every rank takes rank 0's state (a new rank has none of its own)."""
        hvd.broadcast_variables(self.variables, root_rank=0)  # HVD
        super().sync()
        self._values = [v.numpy() for v in self.variables]

    def commit_at(self, state, dist, report):
        """Commits the run's `state` (loop.RunState), then raises
        HostsUpdatedInterrupt on every rank if hosts were added or removed
        (Horovod's commit(), in two, with a record between)."""
        self.examples_seen, self.ranks = state.examples_seen, dist.size
        self.commits += 1
        self.save()
        report.event([state.epoch, state.step], {"elastic_commit_examples": state.examples_seen})
        dist.watchdog.beat("checking for a change of hosts")
        self.check_host_updates()  # HVD

    def check_and_announce(self, state, dist, report, variables):
        """After a re-forming: every rank must hold the same weights; rank 0 says
        how many ranks go on, and from where."""
        digest = distributed.weights_digest(variables)
        digests = dist.allgather_object(digest, "hvd_alexnet.elastic.digest")  # HVD
        if len(set(digests)) != 1:
            raise RuntimeError(f"ranks hold different weights after re-forming: {digests}")
        how = ("shrank" if dist.size < self.ranks else "grew" if dist.size > self.ranks
               else "re-formed")
        report.log([state.epoch, state.step], {"elastic_ranks": dist.size,
                                               "elastic_resumed_examples": state.examples_seen})
        report.say(f"hvd_alexnet: elastic: the job {how} from {self.ranks} to {dist.size} "
                   f"ranks; going on from the last commit ({state.examples_seen} examples "
                   f"seen: step {state.step} of {state.total} at a global batch of "
                   f"{state.global_batch}); weights digest {digest} on every rank")


def run(attempt, committed, on_change):
    """Calls attempt(committed) until it returns, re-forming the job after each
    change of membership; on_change() runs after each re-forming, before the
    state's sync."""
    committed.register_reset_callbacks([on_change])

    def guarded(state):
        try:
            return attempt(state)
        except tf.errors.UnknownError as e:
            # A collective whose peer is gone. Horovod's own wrapper returns None
            # for any other UnknownError, as if training had ended: raise those.
            if "Horovod" in (e.message or "") or "gloo" in (e.message or "").lower():
                raise HorovodInternalError(e) from e
            raise RuntimeError(e.message) from e

    return hvd.elastic.run(guarded)(committed)  # HVD
