"""The guard (train/guard.py) and the step-time breakdown (train/timing.py): a non-finite step leaves no trace, a
spike rolls back and cools the lr down, the cap stops the run, a resume reproduces a recovery, no host sync is
added to the step, and a slow loader is named."""
import os

import pytest
import torch

from helpers import needs_fmnist, resolved, tiny
from processes import join_env, spawn
from fastmoco.errors import TrainingDiverged
from fastmoco.models import MoCo, MoCoV3
from fastmoco.runs.config import TrainConfig
from fastmoco.runs.distributed import ProcessGroup
from fastmoco.train.guard import GuardSettings, SpikeGuard, StepTransaction
from fastmoco.train.loop import Trainer
from fastmoco.train.step import MocoStep
from fastmoco.train.timing import PHASES

TINY = tiny(K=128)
V3 = dict(TINY, method="v3", mlp_dim=32, K=1024)  # 1024: the queue field's default, which v3 requires



def _state(trainer):
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def _fit(cfg, lines=None):
    trainer = Trainer(cfg, log=(lines.append if lines is not None else lambda *_: None))
    try:
        trainer.fit()
        return trainer
    finally:
        trainer.close()


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


# -- the device-side transaction -------------------------------------------------------------------------------
def _guarded_step(tr, opt, loss_fn):
    """One optimizer step under the transaction, as MocoStep takes it on either path."""
    opt.zero_grad()
    tr.begin()
    loss = loss_fn()
    loss.backward()
    ok = tr.finite(loss)
    if tr.host_decides and not ok:
        tr.skip()
        return ok
    opt.step()
    if not tr.host_decides:
        tr.end(ok)
    return ok


PATHS = pytest.mark.parametrize("host", [True, False], ids=["host-decides", "device-select"])


@PATHS
def test_a_non_finite_step_leaves_parameters_buffers_and_optimizer_state_as_they_were(host):
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 1))
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    tr = StepTransaction(net, opt, ProcessGroup(), host_decides=host)

    assert _guarded_step(tr, opt, lambda: net(torch.randn(8, 3)).pow(2).mean())  # creates the momentum buffers
    before = {k: v.clone() for k, v in net.state_dict().items()}
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in net.parameters()]
    bad = torch.randn(8, 3)
    bad[2, 1] = float("nan")
    assert not _guarded_step(tr, opt, lambda: net(bad).pow(2).mean())
    _assert_same(net.state_dict(), before)  # BN running statistics included
    for p, b in zip(net.parameters(), bufs):
        assert torch.equal(opt.state[p]["momentum_buffer"], b)
    assert int(tr.skipped) == 1
    assert _guarded_step(tr, opt, lambda: net(torch.randn(8, 3)).pow(2).mean()) and int(tr.skipped) == 1


@PATHS
def test_a_skipped_first_step_leaves_the_optimizer_state_as_a_fresh_one(host):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    for optim in (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), lambda p: torch.optim.AdamW(p, lr=0.1)):
        net.load_state_dict(start)
        opt = optim(net.parameters())
        tr = StepTransaction(net, opt, ProcessGroup(), host_decides=host)
        x = torch.randn(4, 3)
        for bad in (True, False):
            _guarded_step(tr, opt, lambda: net(x).sum() * (float("inf") if bad else 1.0))
        fresh = torch.nn.Linear(3, 2)
        fresh.load_state_dict(start)
        ref = optim(fresh.parameters())
        ref.zero_grad()
        fresh(x).sum().backward()
        ref.step()
        _assert_same(net.state_dict(), fresh.state_dict())


def _device_path(monkeypatch):
    """Runs take the GPU's path (the verdict selected on the device) on this CPU."""
    real = StepTransaction.__init__
    monkeypatch.setattr(StepTransaction, "__init__",
                        lambda self, model, opt, pg, host_decides=None: real(self, model, opt, pg, False))


# -- the band ------------------------------------------------------------------------------------------------
def test_the_band_is_median_plus_k_mads_with_a_floor():
    s = GuardSettings(k=6.0, window=50, min_values=5, flags=3, recent=10, snapshot_every=10, cooldown_steps=5,
                      cooldown_lr=0.1, max_recoveries=3)
    g = SpikeGuard(s, torch.nn.Linear(1, 1), None, None)
    assert g.threshold() is None
    g.values.extend([1.0, 2.0, 3.0, 4.0, 100.0])  # median 3, MAD 1
    assert g.threshold() == pytest.approx(3.0 + 6.0 * 1.0)
    g.values.clear()
    g.values.extend([5.0] * 6)  # MAD 0: the floor, 1 % of the median
    assert g.threshold() == pytest.approx(5.0 + 6.0 * 0.05)


# -- whole runs ----------------------------------------------------------------------------------------------
def _plant_nan(monkeypatch, cls, calls: set, ranks=None):
    """The method's loss becomes NaN on its forward calls numbered in ``calls`` (1-based), on ``ranks`` only."""
    real = cls.forward
    count = {"n": 0}

    def forward(self, *args):
        loss, keys = real(self, *args)
        count["n"] += 1
        if count["n"] in calls and (ranks is None or int(os.environ.get("RANK", "0")) in ranks):
            loss = loss * float("nan")
        return loss, keys

    monkeypatch.setattr(cls, "forward", forward)


@needs_fmnist()
@PATHS
def test_a_planted_non_finite_gradient_gives_the_weights_of_a_run_that_dropped_the_batch(tmp_path, monkeypatch,
                                                                                          host):
    # v3: its step draws no random numbers (v1/v2's key shuffle does), so "the batch dropped" is a run that
    # trains on every other batch in the same order
    if not host:
        _device_path(monkeypatch)
    cfg = TrainConfig(**{**V3, "out": str(tmp_path / "nan"), "max_steps": 6}).resolved()
    with monkeypatch.context() as m:
        _plant_nan(m, MoCoV3, {3})
        lines = []
        planted = _fit(cfg, lines)
    assert planted.pos.skipped == 1 and planted.guard.recoveries == 0
    real_call = MocoStep.__call__
    count = {"n": 0}

    def dropping(self, micro, momentum, times=None):
        count["n"] += 1
        if count["n"] == 3:  # the batch is drawn and thrown away: nothing trains on it
            return torch.zeros(())
        return real_call(self, micro, momentum, times)

    monkeypatch.setattr(MocoStep, "__call__", dropping)
    dropped = _fit(TrainConfig(**{**V3, "out": str(tmp_path / "dropped"), "max_steps": 6}).resolved())
    _assert_same(_state(planted), _state(dropped))
    for a, b in zip(planted.optimizer.state.values(), dropped.optimizer.state.values()):
        for k in a:
            assert torch.equal(a[k], b[k]), k
    ckpt = torch.load(tmp_path / "nan" / "last.pt", weights_only=False)
    assert ckpt["position"]["skipped"] == 1


@needs_fmnist()
def test_guard_off_still_stops_at_the_first_non_finite_loss(tmp_path, monkeypatch):
    _plant_nan(monkeypatch, MoCo, {3})
    with pytest.raises(TrainingDiverged, match=r"loss became nan at epoch 1, step 3; .*--guard on"):
        _fit(resolved(TINY, tmp_path, guard="off", max_steps=6))


def _plant_spike(monkeypatch, steps: set, start: int = 0, lrs: list | None = None):
    """The loss the host reads is 50x at the run's steps in ``steps`` (the weights are untouched: what the guard
    sees is all that changes). ``start``: the step the run starts at (a resumed run)."""
    real = MocoStep.__call__
    count = {"n": start}

    def call(self, micro, momentum, times=None):
        count["n"] += 1
        if lrs is not None:
            lrs.append(self.optimizer.param_groups[0]["lr"])
        loss = real(self, micro, momentum, times)
        return loss * 50 if count["n"] in steps else loss

    monkeypatch.setattr(MocoStep, "__call__", call)


@needs_fmnist()
def test_a_spike_rolls_back_to_the_snapshot_and_cools_the_lr_down(tmp_path, monkeypatch):
    kw = dict(max_steps=32, guard_snapshot_every=10, guard_cooldown_steps=5, guard_cooldown_lr=0.1)
    calm_lrs = []
    _plant_spike(monkeypatch, set(), lrs=calm_lrs)
    _fit(resolved(TINY, tmp_path / "calm", **kw))
    monkeypatch.undo()

    seen = {}
    real_recover = SpikeGuard._recover

    def recover(self, step):
        line = real_recover(self, step)
        _assert_same(self.model.state_dict(), self.snapshot["model"])  # the weights are the snapshot's
        seen.update(step=step, snapshot_step=self.snapshot_step)
        return line

    monkeypatch.setattr(SpikeGuard, "_recover", recover)
    lrs, lines = [], []
    _plant_spike(monkeypatch, {24, 25, 26}, lrs=lrs)
    trainer = _fit(resolved(TINY, tmp_path / "spike", **kw), lines)
    assert seen == dict(step=26, snapshot_step=20)  # snapshots every 10 calm steps, the third flag recovers
    assert trainer.guard.recoveries == 1
    line = next(x for x in lines if x.startswith("guard:"))
    assert "step 26: loss" in line and "rolled back to the state of step 20" in line and "lr x 0.1 for 5" in line
    # steps 27-31 at a tenth of the schedule's lr, then the schedule's own
    assert lrs[:26] == calm_lrs[:26]
    for i in range(26, 31):
        assert lrs[i] == pytest.approx(0.1 * calm_lrs[i], rel=1e-12)
    assert lrs[31] == pytest.approx(calm_lrs[31], rel=1e-12)
    row = open(tmp_path / "spike" / "metrics.csv").read().splitlines()
    assert row[0].split(",").index("recoveries") >= 0


@needs_fmnist()
def test_more_recoveries_than_allowed_stop_the_run_naming_step_and_cause(tmp_path, monkeypatch):
    _plant_spike(monkeypatch, {24, 25, 26})
    with pytest.raises(TrainingDiverged, match=r"^step 26: loss \S+ above the band's \S+; 3 of the last 10 checks "
                                               r"flagged: a rollback beyond the 0 that --guard-max-recoveries allows; "
                                               r"stopped, last good checkpoint kept \(.*last.pt\); lower --lr$"):
        _fit(resolved(TINY, tmp_path, max_steps=30, guard_snapshot_every=10, guard_max_recoveries=0))


@needs_fmnist()
def test_a_mid_epoch_resume_after_a_recovery_reproduces_the_uninterrupted_run(tmp_path, monkeypatch):
    kw = dict(guard_snapshot_every=10, guard_cooldown_steps=8)  # 32 steps in the epoch
    with monkeypatch.context() as m:
        _plant_spike(m, {24, 25, 26})
        full = _fit(resolved(TINY, tmp_path / "full", **kw))
    with monkeypatch.context() as m:
        _plant_spike(m, {24, 25, 26})
        _fit(resolved(TINY, tmp_path / "cut", max_steps=29, **kw))  # after the recovery, inside the cool-down
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=False)
    assert saved["guard"]["recoveries"] == 1 and saved["guard"]["cooldown_left"] == 5
    assert saved["guard"]["snapshot_step"] == 20 and saved["guard"]["snapshot"] is not None
    with monkeypatch.context() as m:
        _plant_spike(m, {24, 25, 26}, start=29)
        resumed = _fit(resolved(TINY, tmp_path / "cut", resume="auto", **kw))
    assert resumed.guard.recoveries == full.guard.recoveries == 1
    _assert_same(_state(resumed), _state(full))
    a = open(tmp_path / "full" / "metrics.csv").read().splitlines()[1].split(",")[:4]
    b = open(tmp_path / "cut" / "metrics.csv").read().splitlines()[1].split(",")[:4]
    assert a == b  # epoch, step, loss, lr


def _nan_on_one_rank_worker(rank, world, port, results, cfg_kw):
    join_env(rank, world, port)
    real = MoCo.forward
    count = {"n": 0}

    def forward(self, *args):
        loss, keys = real(self, *args)
        count["n"] += 1
        return (loss * float("nan") if rank == 1 and count["n"] == 3 else loss), keys

    MoCo.forward = forward
    trainer = Trainer(TrainConfig(**cfg_kw).resolved(), log=lambda *_: None)
    try:
        trainer.fit()
        results[rank] = dict(state=_state(trainer), skipped=trainer.pos.skipped, steps=trainer.pos.step)
    finally:
        trainer.close()


def _all_true_worker(rank, world, port, results):
    join_env(rank, world, port)
    from fastmoco.runs import distributed

    pg = distributed.setup("cpu")
    try:
        verdicts = [pg.all_true(torch.tensor(flag)) for flag in ([True, False] if rank == 0 else [True, True])]
        results[rank] = [bool(v) for v in verdicts]
    finally:
        distributed.teardown()


@pytest.mark.slow
def test_the_verdict_is_false_on_every_rank_when_one_rank_says_false():
    """Without DDP's gradient all-reduce (a non-finite loss whose gradients are finite, say) the ranks still
    agree: rank 1's True meets rank 0's False in the second call."""
    assert spawn(_all_true_worker) == {0: [True, False], 1: [True, False]}


@needs_fmnist()
@pytest.mark.slow
def test_two_gloo_ranks_skip_a_step_only_one_of_them_saw_non_finite_and_stay_identical(tmp_path):
    res = spawn(_nan_on_one_rank_worker, dict(TINY, out=str(tmp_path), max_steps=5, threads=1, batch_size=16))
    assert res[0]["steps"] == res[1]["steps"] == 5
    assert res[0]["skipped"] == res[1]["skipped"] == 1
    _assert_same(res[0]["state"], res[1]["state"])
    assert all(torch.isfinite(v.float()).all() for v in res[0]["state"].values())


# -- no host sync on the hot path ------------------------------------------------------------------------------
SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy")


def _count_host_reads(tmp_path, monkeypatch, guard: str) -> dict:
    """Every way of reading a tensor on the host, counted inside the step and in the rest of the loop, for a run
    at the CUDA check cadence (every 20 steps)."""
    trainer = Trainer(resolved(TINY, tmp_path / guard, guard=guard, max_steps=40), log=lambda *_: None)
    trainer.check_every = 20  # as on CUDA
    trainer.times.every = 10 ** 9  # the breakdown's sampled steps aside (they synchronise, by design)
    counts = {"step": 0, "loop": 0}
    where = {"in": None}
    with monkeypatch.context() as m:
        for name in SYNCS:
            real = getattr(torch.Tensor, name)

            def counting(self, *a, _real=real, **k):
                if where["in"]:
                    counts[where["in"]] += 1
                return _real(self, *a, **k)

            m.setattr(torch.Tensor, name, counting)
        real_call, real_epoch = MocoStep.__call__, Trainer._run_epoch

        def call(self, *a, **k):
            where["in"] = "step"
            try:
                return real_call(self, *a, **k)
            finally:
                where["in"] = "loop"

        def run_epoch(self, *a, **k):
            where["in"] = "loop"
            try:
                return real_epoch(self, *a, **k)
            finally:
                where["in"] = None

        m.setattr(MocoStep, "__call__", call)
        m.setattr(Trainer, "_run_epoch", run_epoch)
        try:
            trainer.fit()
        finally:
            trainer.close()
    return counts


@needs_fmnist()
def test_the_guard_adds_no_host_sync_to_the_step(tmp_path, monkeypatch):
    """The step reads the host as often with the guard as without (on CPU the enqueue's pointer is a host value,
    one read per step either way; on CUDA it stays on the device); the loop reads the same per check (one read
    of [loss, skip count] instead of loss.item())."""
    _device_path(monkeypatch)  # the GPU's path: on the CPU the host reads the verdict, which costs nothing there
    off = _count_host_reads(tmp_path, monkeypatch, "off")
    on = _count_host_reads(tmp_path, monkeypatch, "on")
    assert off["step"] == 32  # 1024 images / 32: one epoch of 32 steps, the pointer read once each
    assert on["step"] == off["step"]
    assert on["loop"] == off["loop"], (on, off)


# -- where the time goes --------------------------------------------------------------------------------------
@needs_fmnist()
def test_every_epoch_reports_where_the_step_time_goes_and_names_a_slow_loader(tmp_path):
    import time

    lines = []
    trainer = Trainer(resolved(TINY, tmp_path, epochs=1, subset=512), log=lines.append)
    real_epoch = trainer.data.epoch

    def slow_epoch(*a, **k):
        for batch in real_epoch(*a, **k):
            time.sleep(0.2)  # a loader far slower than the tiny model's step
            yield batch

    trainer.data.epoch = slow_epoch
    try:
        trainer.fit()
    finally:
        trainer.close()
    share = next(x for x in lines if "step time:" in x)
    assert all(label in share for label in ("data wait", "forward + loss", "backward", "optimizer",
                                             "EMA + enqueue", "checks/logging/checkpoints"))
    hint = next(x for x in lines if "hint:" in x)
    assert "waiting for data" in hint and "--workers" in hint
    header, row = open(tmp_path / "metrics.csv").read().splitlines()[:2]
    values = dict(zip(header.split(","), row.split(",")))
    assert float(values["time_data"]) > 50
    assert sum(float(values[f"time_{p}"]) for p in PHASES) == pytest.approx(100, abs=0.5)


@needs_fmnist()
def test_a_run_with_a_fast_loader_prints_no_data_hint(tmp_path):
    lines = []
    _fit(resolved(TINY, tmp_path, epochs=1, subset=512), lines)
    assert any("step time:" in x for x in lines)
    assert not any("hint:" in x for x in lines)
