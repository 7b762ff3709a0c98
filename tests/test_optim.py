"""The recipe flags' building blocks: optimizers, schedules (against torch's own), label smoothing,
test-time flips, the resumable scheduler state, and `--recipe` with explicit flags winning."""

import math

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR

from lab2.config import RECIPES
from lab2.data.device_dataset import DeviceDataset, device_dataloader
from lab2.engine.evaluation import evaluate, flip_averaged_logits
from lab2.engine.optim import (
    LR_SCHEDULERS,
    OPTIMIZERS,
    create_optimizer,
    create_scheduler,
    rescale_learning_rate,
    scheduler_total_steps,
    training_loss,
)
from lab2.errors import UserError
from lab2.flags import config_from_flags, parse_args

PEAK = 0.1


def lrs(scheduler, steps: int) -> list[float]:
    """The rate before each of `steps` optimizer steps."""
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


def fresh_optimizer(name: str = "sgd", lr: float = PEAK, **kwargs):
    return create_optimizer([nn.Parameter(torch.ones(3))], name, lr, **kwargs)


@pytest.mark.parametrize(
    "kind, torch_scheduler",
    [
        ("linear", lambda opt, total: LinearLR(opt, start_factor=1.0, end_factor=0.0, total_iters=total)),
        ("cosine", lambda opt, total: CosineAnnealingLR(opt, T_max=total, eta_min=0.0)),
    ],
)
def test_schedules_without_warmup_equal_torch_schedulers(kind, torch_scheduler):
    total = 17
    ours = lrs(create_scheduler(fresh_optimizer(), kind, total), total + 1)
    theirs = lrs(torch_scheduler(fresh_optimizer(), total), total + 1)
    assert ours == pytest.approx(theirs, abs=1e-12)
    assert ours[0] == PEAK and ours[-1] == pytest.approx(0.0, abs=1e-12)


def test_warmup_is_linear_from_zero_then_the_transformers_decay():
    total, ratio = 10, 0.2  # ceil(0.2 * 10) = 2 warm-up steps
    linear = lrs(create_scheduler(fresh_optimizer(), "linear", total, ratio), total)
    assert linear == pytest.approx([PEAK * f for f in (0, 0.5, 1, 7 / 8, 6 / 8, 5 / 8, 4 / 8, 3 / 8, 2 / 8, 1 / 8)])
    cosine = lrs(create_scheduler(fresh_optimizer(), "cosine", total, ratio), total)
    assert cosine == pytest.approx([0, PEAK / 2] + [PEAK * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)])
    constant = lrs(create_scheduler(fresh_optimizer(), "constant", total, ratio), total)
    assert constant == pytest.approx([0, PEAK / 2] + [PEAK] * 8)
    assert lrs(create_scheduler(fresh_optimizer(), "constant", total), total) == [PEAK] * total  # the seed's rate


def test_one_cycle_is_torchs_with_the_peak_at_the_warmup_ratio():
    total = 100
    optimizer = fresh_optimizer("adamw")
    scheduler = create_scheduler(optimizer, "one_cycle", total, 0.25)
    rates, betas = [], []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        betas.append(optimizer.param_groups[0]["betas"][0])
        optimizer.step()
        scheduler.step()
    assert rates[0] == pytest.approx(PEAK / 25)  # torch's div_factor
    assert max(rates) == pytest.approx(PEAK) and rates.index(max(rates)) == 24  # pct_start * total - 1
    assert rates[-1] == pytest.approx(PEAK / 25 / 1e4)  # torch's final_div_factor
    assert betas[0] == pytest.approx(0.95) and betas[24] == pytest.approx(0.85)  # momentum cycles inversely
    default = create_scheduler(fresh_optimizer(), "one_cycle", total)  # warmup_ratio 0: torch's pct_start 0.3
    peak_at = lrs(default, total)
    assert peak_at.index(max(peak_at)) == 29


def test_the_command_lines_names_are_the_registrys():
    """--optim's and --lr_scheduler_type's choices live in lab2.config (no torch for --help, no upward import);
    they must name exactly the builders, in the order --help shows them."""
    from lab2.config import LR_SCHEDULERS as SCHEDULE_NAMES
    from lab2.config import OPTIMIZERS as OPTIMIZER_NAMES

    assert (OPTIMIZER_NAMES, SCHEDULE_NAMES) == (tuple(OPTIMIZERS), tuple(LR_SCHEDULERS))


def test_optimizers_and_weight_decay():
    adam, adamw, sgd = (fresh_optimizer(n, weight_decay=0.05) for n in ("adam", "adamw", "sgd"))
    assert type(adam) is torch.optim.Adam and type(adamw) is torch.optim.AdamW and type(sgd) is torch.optim.SGD
    assert sgd.param_groups[0]["nesterov"] and sgd.param_groups[0]["momentum"] == 0.9
    assert not fresh_optimizer("sgd", momentum=0.0).param_groups[0]["nesterov"]  # plain SGD: Nesterov needs momentum
    # Decoupled vs L2: with a zero gradient only AdamW moves the weights (by lr * wd).
    for optimizer, moved in ((adam, False), (adamw, True)):
        weight = optimizer.param_groups[0]["params"][0]
        weight.grad = torch.zeros_like(weight)
        optimizer.step()
        assert torch.allclose(weight, torch.full((3,), 1 - PEAK * 0.05)) == moved


def test_rescale_keeps_the_schedule_shape_and_position():
    for kind in ("one_cycle", "cosine"):
        reference = create_scheduler(fresh_optimizer(), kind, 20, 0.1)
        lrs(reference, 7)
        rescaled = create_scheduler(fresh_optimizer(), kind, 20, 0.1)
        lrs(rescaled, 7)
        assert rescale_learning_rate(rescaled.optimizer, rescaled, PEAK / 2) == pytest.approx(PEAK)
        assert lrs(rescaled, 13) == pytest.approx([lr / 2 for lr in lrs(reference, 13)])


def test_prepared_scheduler_survives_save_and_load_state(tmp_path):
    """Through accelerator.prepare, save_state/load_state carry the schedule: a resumed run continues it exactly."""

    def build():
        torch.manual_seed(0)
        accelerator = Accelerator(cpu=True)
        model = nn.Linear(4, 2)
        optimizer = create_optimizer(model.parameters(), "adamw", 1e-2, 0.05, fused=True)
        scheduler = create_scheduler(optimizer, "one_cycle", scheduler_total_steps(10, 2, accelerator.num_processes))
        return accelerator, *accelerator.prepare(model, optimizer, scheduler)

    def train(accelerator, model, optimizer, scheduler, steps):
        for step in range(steps):
            x = torch.full((8, 4), float(step))
            accelerator.backward(model(x).square().mean())
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        return optimizer.param_groups[0]["lr"], [p.detach().clone() for p in model.parameters()]

    straight = build()
    train(*straight, 8)
    lr_straight, weights_straight = train(*straight, 7)
    first = build()
    train(*first, 8)
    first[0].save_state(str(tmp_path / "state"))
    second = build()
    second[0].load_state(str(tmp_path / "state"))
    lr_resumed, weights_resumed = train(*second, 7)
    assert lr_resumed == lr_straight
    assert all(torch.equal(a, b) for a, b in zip(weights_resumed, weights_straight, strict=True))


def test_label_smoothing_is_torchs_definition():
    torch.manual_seed(0)
    logits, labels = torch.randn(16, 10), torch.randint(0, 10, (16,))
    log_p = logits.log_softmax(dim=1)
    for eps in (0.0, 0.1, 0.3):
        targets = F.one_hot(labels, 10) * (1 - eps) + eps / 10  # (1 - e) on the true class plus e / C on each
        by_hand = -(targets * log_p).sum(dim=1).mean()
        assert training_loss(logits, labels, eps).item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert training_loss(logits, labels, 0.1) != training_loss(logits, labels, 0.0)


class RecordingModel(nn.Module):
    """A small asymmetric CNN that keeps every batch it is called on."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 30 * 30, 10))
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.clone())
        return self.net(x)


def test_tta_evaluates_the_mirrored_batch_too_and_averages_the_logits():
    torch.manual_seed(1)
    images, labels = torch.randint(0, 256, (37, 3, 32, 32), dtype=torch.uint8), torch.randint(0, 10, (37,))
    loader = device_dataloader(DeviceDataset(images, labels, train=False), 37, shuffle=False)
    model = RecordingModel()
    accelerator = Accelerator(cpu=True)
    plain = evaluate(model, loader, accelerator, 10)
    assert len(model.seen) == 1
    model.seen.clear()
    flipped = evaluate(model, loader, accelerator, 10, tta=True)
    batch, mirrored = model.seen
    assert torch.equal(mirrored, batch.flip(3))  # the second forward is the mirror image (width axis)
    with torch.no_grad():
        expected = (model.net(batch) + model.net(batch.flip(3))) / 2
    assert torch.allclose(flip_averaged_logits(model.net, batch), expected)
    assert flipped.loss == pytest.approx(F.cross_entropy(expected, labels).item(), rel=1e-5)
    assert flipped.accuracy == pytest.approx((expected.argmax(1) == labels).float().mean().item())
    assert flipped.loss != pytest.approx(plain.loss)


def test_recipe_fast_sets_its_values_and_explicit_flags_win():
    fast = parse_args(["--recipe", "fast"])
    for flag, value in RECIPES["fast"].items():
        assert getattr(fast, flag) == value, flag
    assert fast.lr_scheduler_type == "one_cycle" and fast.tta  # what the recipe is about
    mixed = parse_args(
        ["--recipe", "fast", "--learning_rate=0.01", "--num_train_epochs", "3", "--no-tta", "--optim", "adam"]
    )
    assert (mixed.learning_rate, mixed.num_train_epochs, mixed.tta, mixed.optim) == (0.01, 3, False, "adam")
    assert (
        mixed.label_smoothing_factor == RECIPES["fast"]["label_smoothing_factor"]
    )  # the rest still comes from the recipe
    api = config_from_flags(recipe="fast", learning_rate=0.01, tta=False)  # lab2.train(**flags): the same rule
    assert (api.learning_rate, api.tta, api.optim, api.lr_scheduler_type) == (0.01, False, "adamw", "one_cycle")
    seed = parse_args([])
    assert (seed.optim, seed.lr_scheduler_type, seed.label_smoothing_factor, seed.tta, seed.eval_strategy) == (
        "adam",
        "constant",
        0.0,
        False,
        "epoch",
    )


def test_eval_strategy_steps_and_bad_recipe_values(capsys):
    assert parse_args(["--eval_strategy", "steps", "--eval_steps", "7"]).eval_every_steps == 7
    assert (
        parse_args(["--eval_strategy", "steps", "--logging_steps", "9"]).eval_every_steps == 9
    )  # transformers' fallback
    assert parse_args([]).eval_every_steps is None
    # Out of a flag's range: refused while parsing (exit 2, one line naming the flag).
    for argv, flag in (
        (["--label_smoothing_factor", "-0.1"], "--label_smoothing_factor"),
        (["--weight_decay", "-1"], "--weight_decay"),
        (["--eval_strategy", "steps", "--eval_steps", "0"], "--eval_steps"),
        (["--warmup_ratio", "1"], "--warmup_ratio must be >= 0 and < 1"),  # a fraction's range is open at 1
    ):
        with pytest.raises(SystemExit) as exit_info:
            parse_args(argv)
        assert exit_info.value.code == 2 and flag in capsys.readouterr().err
    # In range but meaningless together: refused by the checks after parsing.
    with pytest.raises(UserError, match="--eval_strategy steps"):
        parse_args(["--eval_steps", "5"])
