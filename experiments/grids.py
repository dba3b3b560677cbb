"""The experiments, as data: which runs each study makes, on what budget, with which seeds.

A run is (task, residual variant, seed, knobs). Knobs are the few settings a study varies on top of the task's
base config (depth, width, learning rate); a run's name spells all of them, e.g. `dhc4-L16-d64-lr0.003-s2`,
so two runs with different settings never share a folder (the runner also checks a fingerprint of the full
argument list and refuses a folder that holds another configuration). All runs of a task live in one pool,
results/<task>/runs/<name>/; a study is a view on that pool, so a run two studies need is made once.

Pairing: seed s sets the initialisation and the data order (TextDataModule draws window i from a generator seeded
by (s, i)), identically for every variant, so run `<variant>-...-s<s>` is paired with `residual-...-s<s>`.

Held-out seeds: every study names the seeds its settings were chosen on (`choice_seeds`) and the seeds that were
never used for a choice (`confirm_seeds`); summaries report the two sets apart. A third set (`added_seeds`) holds
seeds added after the confirmation had been read: never used for a choice either, but chosen to exist because
the confirmation was inconclusive, so summaries report it apart from both (pooling it with the confirmation
would be optional stopping). A fourth (`added2_seeds`), where a study has one, was added after the third had been
read, its size and comparison fixed before any of its runs: it too is reported as a set of its own.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VARIANTS = ("residual", "dhc1", "dhc2", "dhc4", "dhc8", "dhc4-notanh", "shc2", "shc4", "mhc4")

# knob -> the CLI argument it sets, per task. Keys are short because they go into run names.
KNOBS: dict[str, dict[str, str]] = {
    "L": {"lm": "--model.init_args.arch.n_layer", "vit": "--model.init_args.arch.depth"},
    "d": {"lm": "--model.init_args.arch.n_embd", "vit": "--model.init_args.arch.dim"},
    "lr": {"lm": "--model.init_args.optim.lr", "vit": "--model.init_args.optim.lr"},
    # a longer run with the same warmup; the cosine stretches to the new end (the equal-wall-clock control)
    "steps": {"lm": "--trainer.max_steps", "vit": "--trainer.max_steps"},
    # generated training images per class (the ViT's dataset size; its validation set stays 300 per class)
    "train": {"vit": "--data.init_args.synthetic_train_per_class"},
    # objects per generated image: 2 = the shape-pairs task (21 classes; lit_hc.data.shapes)
    "obj": {"vit": "--data.init_args.synthetic_objects"},
    # HCConfig.fused: the C++ one-pass connections (the same function, its sums in another order); a flag, so the
    # name says just "fused"
    "fused": {"lm": "--model.init_args.hc.fused", "vit": "--model.init_args.hc.fused"},
}


def knob_text(key: str, value) -> str:
    """A knob as run names and table rows spell it: 'lr0.006', 'steps1100'; a flag that is on, its key alone."""
    return key if value is True else f"{key}{value:g}"


def knob_arg(value) -> str:
    """A knob's value as the CLI takes it."""
    return str(value).lower() if isinstance(value, bool) else f"{value:g}"


@dataclass(frozen=True)
class Budget:
    """How long every run of a study trains, counted in samples of the batch (windows or images)."""

    steps: int
    batch_size: int
    val_every: int
    log_every: int = 10
    overrides: tuple[str, ...] = ()  # extra CLI arguments, e.g. a smaller model for QUICK

    def units(self, block_size: int = 1) -> int:
        return self.steps * self.batch_size * block_size


@dataclass(frozen=True)
class Run:
    task: str
    variant: str
    seed: int
    knobs: tuple[tuple[str, int | float], ...] = ()  # (key, value) in KNOBS order

    @property
    def name(self) -> str:
        return "-".join([self.variant, *(knob_text(k, v) for k, v in self.knobs), f"s{self.seed}"])

    def knob(self, key: str):
        return dict(self.knobs).get(key)

    def folder(self, results: Path) -> Path:
        """The run's folder in its task's pool: results/<task>/runs/<name>/."""
        return results / self.task / "runs" / self.name


def run(task: str, variant: str, seed: int, **knobs) -> Run:
    unknown = set(knobs) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knobs {sorted(unknown)}; known: {list(KNOBS)}")
    foreign = sorted(k for k in knobs if task not in KNOBS[k])
    if foreign:
        raise ValueError(f"knobs {foreign} do not apply to the {task} task")
    return Run(task, variant, seed, tuple((k, knobs[k]) for k in KNOBS if k in knobs))


@dataclass(frozen=True)
class Study:
    """A set of runs on one budget, and how to read it (which seeds chose its settings, which confirm them)."""

    name: str
    task: str
    budget: Budget
    runs: tuple[Run, ...]
    choice_seeds: tuple[int, ...]
    confirm_seeds: tuple[int, ...] = ()
    added_seeds: tuple[int, ...] = ()  # added after the confirmation was read (module docstring)
    added2_seeds: tuple[int, ...] = ()  # added after the added seeds were read (module docstring)
    about: str = ""
    base_knobs: dict = field(default_factory=dict)  # the knobs every run of the study shares unless it varies them
    # (row, reference, question): paired differences beside the ones to the baseline, e.g. a control's
    comparisons: tuple[tuple[str, str, str], ...] = ()

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.choice_seeds + self.confirm_seeds + self.added_seeds + self.added2_seeds


BASE_CONFIGS = {
    "cpu": {"lm": "configs/lm/base.yaml", "vit": "configs/vit/base.yaml"},
    "mid": {"lm": "configs/lm/gpt2-small.yaml"},
    "paper": {"lm": "configs/lm/olmo-1b.yaml", "vit": "configs/vit/vit-b16.yaml"},
}
# Runs per variant of the GPU grids, whose configs hold the whole recipe (no knobs, no CPU budget): the mid-scale
# one compares the baseline with DHC x4 over three paired seeds; the paper-scale one is every variant once.
SCALED_GRIDS = {"mid": {"residual": 3, "dhc4": 3}, "paper": {"residual": 1, "dhc1": 1, "dhc2": 1, "dhc4": 1,
                "dhc8": 1, "dhc4-notanh": 1, "shc2": 1, "shc4": 1, "mhc4": 1}}

# LM regime of the depth study: byte-level GPT, width 64, 4 heads, context 128, batch 16, 600 steps
# (1,228,800 tokens), AdamW 3e-3, warmup 60 steps then cosine to 0.1x. Step time on this 2-core CPU, residual /
# DHC x4 (medians logged in the depth study): L=4 0.06 / 0.11 s, L=16 0.22 / 0.40 s, L=32 0.41 / 0.76 s.
LM_BUDGET = Budget(steps=600, batch_size=16, val_every=100)
LM_WIDTH, LM_LR = 64, 3e-3
DEPTHS = (4, 8, 16, 32)
# The depth studies' held-out seeds: seeds 0-2 chose the main grid's depth from them, so whether the gain grows with
# depth is read again on seeds 3-5, run after every choice had been fixed. The ViT's were added after its main grid
# had run (whose seeds 3-5 confirmed, chose nothing): at L = 24 its DHC x4 runs at 2e-3 are the main grid's own
# (same names, one pool), every other run is new.
DEPTH_CONFIRM_SEEDS = {"lm": (3, 4, 5), "vit": (3, 4, 5)}

# ViT regime of the depth study and the main grid: the generated shapes (10 classes, 32 px, 5,000 training and
# 3,000 validation images: 300 per class, so a top-1 difference of 2 points is about one binomial std of a
# difference instead of 1.6 points each), patch 4 (64 tokens), width 64, 4 heads, MLP ratio 2, batch 64, 600 steps
# (38,400 images, 7.7 epochs), AdamW 2e-3 (the base config's LR, fixed before any HC run), warmup 60 steps then
# cosine to 0.05x. Step time on this 2-core CPU, residual / DHC x4 (a 60-step probe, medians of 12 logged rates):
# L=4 0.079 / 0.156 s, L=12 0.219 / 0.415 s, L=24 ~0.4 / ~0.84 s. Depths run 24 first (the main grid's), then 12, 4, 8,
# and 32.
VIT_BUDGET = Budget(steps=600, batch_size=64, val_every=100)
VIT_WIDTH, VIT_LR = 64, 2e-3
# History of the ViT regime (each decided on seeds 0-2; tables in results/vit/regime-*):
# - 600 steps, L = 12, 4, 8: the baseline gained nothing from depth (final val loss 0.917 / 0.878 / 0.927 at
#   L = 4 / 8 / 12) and DHC x4 - residual went +0.119, +0.024, +0.006: HC's standing improving with depth, as in
#   the LM, but no gain (results/vit/regime-600; a main grid at L = 12 confirmed no effect on seeds 3-5).
# - 1,800 steps on 3x the images (VIT_REGIME_1800, single shapes): depth paid the baseline only weakly (L12 - L4:
#   -0.045, +0.004, -0.040) and DHC x4 gained nothing at 4 or 12 layers (results/vit/regime-1800).
# - Shape pairs, 1,800 steps (VIT_REGIME_PAIRS; lit_hc.data.shapes): 12 layers worse than 4 for the baseline on 2 of
#   3 seeds, seed spread 0.15, DHC x4 - residual +0.087 [-0.384, +0.558] at L = 12; twice the LR made the 12-layer
#   baseline far worse (results/vit/regime-pairs).
# - 600 steps again, extended to L = 24 as the LM's depth study reaches 32 (commit 19bdbd1, the old regime's code):
#   the baseline collapses with depth (1.593 / 1.351 / 1.301 on seeds 0-2, against 0.88-0.93 at 4-12 layers) and
#   DHC x4 does not (0.753 / 0.925 / 0.774): paired -0.840, -0.426, -0.527 = -0.597 [-1.134, -0.060], 3/3 seeds.
#   That is the LM's trend (HC's gain grows with depth, the baseline worsening with it), an effect 4x the
#   baseline's seed spread (0.157); the LR control below shows most of it is the baseline's LR (at 0.5x it trains
#   normally). So the ViT studies return to the 600-step single-shape regime with depths up to 24, and the main
#   grid and its controls run at L = 24, where the two readings (a gain, or only robustness to the LR) differ.
#   The knobs `steps600-train500` are in every run's name, so that runs of this code never share a folder with the
#   old code's runs of the same settings (which have no such knobs in their names).
# - L = 32 added last (after 24, 12, 4, 8 had run), so that the ViT's depth axis reaches the LM's: it runs after
#   the other depths and chose nothing (the main grid's depth was picked from 4-24).
VIT_DEPTHS = (24, 12, 4, 8, 32)
VIT_MAIN_DEPTH = 24
VIT_REGIME_1800 = {"steps": 1800, "train": 1500}
VIT_REGIME_PAIRS = {"steps": 1800, "train": 1500, "obj": 2}
VIT_REGIME = {"steps": 600, "train": 500}
# The ViT main grid's LR: the baseline's best in the controls' LR sweep at L = 24 (seeds 0-1; results/README.md 4a):
# 0.5x (residual 0.920 / 0.943 against 1.593 / 1.351 at 1x, and 1.218 at 0.25x on seed 0). DHC x4's best there is
# 1x (0.753 / 0.925 against 0.877 / 1.078 at 0.5x), so the grid also runs DHC x4 at its own LR on every seed of the
# headline pair: the comparison at each arm's best LR gets its confirmation seeds too.
VIT_MAIN_LR = VIT_LR / 2
VIT_DHC4_OWN_LR = VIT_LR
# DHC x4's step time over the baseline's at L = 24 in the clean runs of that study (seeds 1-2: 0.844 / 0.415,
# 0.837 / 0.358 s): 2.0-2.3, so the equal-wall-clock control gives the baseline 2x the steps.
VIT_TIME_RATIO = 2.0
# The ViT headline pair (the baseline, DHC x4 at the grid's LR and at its own) on three more seeds, added after the
# confirmation seeds 3-5 were read: DHC x4 at its own LR won on all three, but the baseline's seed spread (0.08,
# against the LM's 0.01-0.02) left the 3-seed interval at -0.161 [-0.508, +0.186]. Nothing is re-chosen: same
# depth, LRs and budget; the summaries report these seeds as a set of their own.
VIT_ADDED_SEEDS = (6, 7, 8)
# The ViT's comparison at each arm's best LR (the baseline at VIT_MAIN_LR, DHC x4 at VIT_DHC4_OWN_LR) on ten more
# seeds, added after seeds 6-8 were read: over nine seeds DHC x4 won on all nine (-0.127 [-0.204, -0.051]), but no
# set of three alone excluded 0 (choice -0.156, confirmation -0.161 [-0.508, +0.186], added -0.065 [-0.159,
# +0.029]). Ten seeds, fixed before any of them ran, give a set whose interval alone can decide (half-width ~0.07 at
# the paired spread of 0.10 seen over nine); only that pair runs (the one-LR comparison showed no gain on any set),
# nothing is re-chosen, and the summaries report the ten as a set of their own, whatever the first of them show.
VIT_ADDED2_SEEDS = tuple(range(9, 19))
# The LM's secondary claims on six more seeds, added after all six seeds of every variant had been read: x4 against
# x2 (-0.027 [-0.054, +0.001], 4/6), tanh (+0.010 [-0.020, +0.040], 2/6) and SHC against DHC (+0.009 at x4, -0.000
# at x2) sat within the ~0.03 six paired seeds resolve (results/README.md 3). The variants those claims compare, and
# the baseline they are all read against, on seeds 6-11 (the number fixed before any of them ran, so twelve seeds
# in all, whatever the first of them show); nothing is re-chosen, and the summaries report them as a set of their
# own. DHC x1 (x1 < x2 already 6/6), x8 and mHC x4 (each resolved: ~x4, and behind x4 on every seed) do not run.
LM_ADDED_SEEDS = (6, 7, 8, 9, 10, 11)
LM_ADDED_VARIANTS = ("residual", "dhc4", "dhc2", "dhc4-notanh", "shc2", "shc4")
# The third reading of the HC paper's sqrt(n) output-init scaling (its Sec. 4 does not say the direction; `divide`,
# HCConfig's default for HC, halves the std at n = 4, `none` leaves it): `multiply` doubles it. Added after every
# other LM run had been read, on the choice seeds, last: the LM's init controls had divide and none only.
LM_INIT_MULTIPLY_SEEDS = (0, 1, 2)
# DHC x4 with HCConfig.fused (the C++ one-pass connections: the same function, its sums in another order) on the
# choice and confirmation seeds, last: how far the float order alone moves the headline comparison, and what the
# path that turns HC's cost down would give if the grids were made with it. Nothing is chosen from these runs.
LM_FUSED_SEEDS = (0, 1, 2, 3, 4, 5)
# The same third reading for the ViT, at DHC x4's own LR (where half of its gain went with the halved init, and the
# baseline with that init does not train): added after every other ViT run had been read, on the choice seeds, last.
VIT_INIT_MULTIPLY_SEEDS = (0, 1, 2)

QUICK_OVERRIDES = {
    "lm": ("--model.init_args.arch.n_head", "2", "--data.init_args.block_size", "32",
           "--data.init_args.val_windows", "4", "--data.init_args.val_fraction", "0.2"),
    "vit": ("--model.init_args.arch.heads", "2", "--model.init_args.arch.patch_size", "8",
            "--data.init_args.image_size", "16", "--data.init_args.num_workers", "0",
            "--data.init_args.synthetic_train_per_class", "8", "--data.init_args.synthetic_val_per_class", "2"),
}
QUICK_BUDGET = {
    "lm": Budget(steps=4, batch_size=4, val_every=2, log_every=1, overrides=QUICK_OVERRIDES["lm"]),
    "vit": Budget(steps=4, batch_size=8, val_every=2, log_every=1, overrides=QUICK_OVERRIDES["vit"]),
}


def depth_study(task: str = "lm", quick: bool = False, lr: float | None = None) -> Study:
    """Does HC's gain grow with depth at fixed width? Residual vs DHC x4 against depth, equal tokens (images).

    LM: L in DEPTHS at width 64; ViT: L in VIT_DEPTHS at width 64. Seeds 0-2 are the choice set: the main grid's
    depth is picked from this study; DEPTH_CONFIRM_SEEDS (3-5) read the trend again. Runs go depth by depth in
    the tuple's order, every seed of a depth before the next (the choice seeds first, then the confirmation seeds),
    so an interrupted study already holds whole depths. QUICK: L in {1, 2}, width 32, seed 0 then seed 1.
    """
    if task == "lm":
        depths, width, budget, regime = DEPTHS, LM_WIDTH, LM_BUDGET, {}
    else:
        depths, width, budget, regime = VIT_DEPTHS, VIT_WIDTH, VIT_BUDGET, VIT_REGIME
    seeds, confirm, name = (0, 1, 2), DEPTH_CONFIRM_SEEDS[task], "depth"
    if lr is not None:  # the same study at another LR (depth_grid_lr_study): its own folder and seed sets
        seeds, confirm, name = (0, 1, 2), DEPTH_GRID_LR_CONFIRM_SEEDS, "depth-grid-lr"
    lr = LM_LR if lr is None and task == "lm" else lr if lr is not None else VIT_LR
    if quick:
        depths, width, seeds, confirm, budget, regime = (1, 2), 32, (0,), (1,), QUICK_BUDGET[task], {}
    # The confirmation seeds after every choice seed, again depth by depth: the figure as first read comes first.
    runs = tuple(run(task, v, s, L=L, d=width, lr=lr, **regime)
                 for part in (seeds, confirm) for L in depths for s in part for v in ("residual", "dhc4"))
    return Study(name, task, budget, runs, choice_seeds=seeds, confirm_seeds=confirm,
                 about="paired Δ (DHC x4 − residual) of the final validation loss against depth at width "
                       f"{width}, equal {'tokens' if task == 'lm' else 'images'}, AdamW lr {lr:g}",
                 base_knobs={"d": width, "lr": lr, **regime})


# The depth the LM main grid and its controls run at, chosen from the depth study on seeds 0-2 (results/lm/depth).
LM_MAIN_DEPTH = 16
# The main grid's learning rate, chosen on seeds 0-1 from the controls' LR sweep at LM_MAIN_DEPTH
# (results/lm/controls): 2x the depth study's LR is the baseline's best (2.060 against 2.137 at 1x and 2.301 at
# 4x) and within 0.02 of DHC x4's best (1.946 at 2x, 1.929 at 4x), so both arms run at (or near) their best. (The
# first make's code; with the current code 2x is DHC x4's best on average too, 1.952 against 1.967 at 4x.)
LM_MAIN_LR = 2 * LM_LR
# The LM depth study again at the main grid's LR (2x the depth study's): the depth study ran at 3e-3, where the
# 16-layer baseline is not at its best (the LR sweep: 2.137 at 3e-3 against 2.060 at 6e-3, seeds 0-1), so a reader
# may ask whether HC's gain grows with depth only because the deep baseline is under-tuned. Nothing is chosen from
# it (it was planned after the main grid had run), so every seed of it chose nothing at L != 16; at L = 16 its runs
# are the main grid's own (the same names: one pool), whose LR was chosen on seeds 0-1 there. Seeds 0-2 first, depth
# by depth, then 3-5.
DEPTH_GRID_LR_CONFIRM_SEEDS = (3, 4, 5)


def depth_grid_lr_study(task: str = "lm", quick: bool = False) -> Study:
    """The depth study at the main grid's LR (LM only; results/lm/depth-grid-lr/)."""
    if task != "lm":
        raise ValueError("the depth-grid-lr study is the LM's (the ViT's main grid runs at 0.5x its depth study's LR, "
                         "where its 24-layer baseline trains normally; its LR sweep is in the controls)")
    return depth_study(task, quick, lr=LM_MAIN_LR)
# DHC x4's step time over the baseline's at LM_MAIN_DEPTH in the depth study (seeds 0-2 on this 2-core CPU:
# 0.421/0.229, 0.433/0.209, 0.353/0.226 s = 1.84, 2.07, 1.56, ratio of the means 1.82): the equal-wall-clock
# control gives the baseline this many times the steps, rounded to a whole validation interval so that its
# last evaluation is its final step (600 x 1.8 -> 1,100 steps).
LM_TIME_RATIO = 1.8


def wall_clock_steps(budget: Budget, ratio: float, steps: int | None = None) -> int:
    """`steps` (default: the budget's) times `ratio`, rounded to a whole validation interval."""
    return budget.val_every * round((steps or budget.steps) * ratio / budget.val_every)


# The LM's DHC x4 was best at the largest LR of the sweep (4x: 1.941 / 1.916 against 1.973 / 1.919 at 2x, seeds 0-1,
# the first make's code), so the controls also run it at this multiple of the depth study's LR: its best bracketed
# from above (8x: 2.076 / 2.115; with the current code 2x and 4x are within 0.02 of each other, results/README.md 2).
LM_DHC4_TOP_LR = 8.0


def confound_controls(task: str, seeds: tuple[int, ...], base: dict) -> tuple[list[Run], tuple]:
    """The parameter and output-init controls at the settings `base`, and the comparisons that read them: the
    baseline one block deeper (more parameters than DHC x4 adds), the baseline with DHC x4's halved output init,
    DHC x4 without it."""
    L = base["L"]
    runs = [run(task, "residual", s, **(base | {"L": L + 1})) for s in seeds]
    runs += [run(task, v, s, **base) for s in seeds for v in ("residual-init-0.5", "dhc4-init-none")]
    comparisons = (
        ("residual-init-0.5", "residual", "output init: the baseline with DHC x4's halved output-projection init"),
        ("dhc4-init-none", "dhc4", "output init: DHC x4 without the halved init"),
        (f"residual-L{L + 1}", "residual", "parameters: the baseline one block deeper"),
        ("dhc4", f"residual-L{L + 1}", "parameters: DHC x4 against the deeper baseline (more parameters than DHC x4)"),
    )
    return runs, comparisons


def controls_study(task: str = "lm", quick: bool = False) -> Study:
    """The controls a reviewer asks for, at the main grid's depth, each paired by seed with the baseline there:

    - learning rate: residual and DHC x4 at other multiples of the depth study's LR (seeds 0-1), beside 1x
      (seeds 0-2). LM: 0.5x was worse than 1x for both arms on both seeds (residual 2.250, 2.239 vs 2.162,
      2.111; DHC x4 2.184 vs 2.062 on seed 0), so the sweep extends upwards (4x) instead of to 0.25x; 2x then
      beat 1x for both arms (seeds 0-1: residual 2.060 vs 2.137, DHC x4 1.946 vs 2.040), so 4x ran next, before
      the other controls. ViT: at L = 12 (600 steps) 2x, then 0.5x, 1x being the best for both arms; at
      L = 24 0.5x first (is the 24-layer baseline only trained at too high an LR? yes: 0.5x is its best), then
      2x (is 1x DHC x4's best from above too? the main grid's own-LR comparison rests on it), then 0.25x (the
      baseline's bracket from below). LM: DHC x4 was best at 4x, the largest LR tried, so DHC x4 alone runs at
      8x last (its bracket from above; the baseline at 4x is already far past its best);
    - output-init confound: the baseline with DHC x4's halved output-projection init; DHC x4 without it;
    - parameters: the baseline one block deeper, more parameters than DHC x4 adds.

    The cost control (the baseline given DHC x4's wall-clock time) is part of the main grid, at its LR.
    """
    main_depth, width, lr, budget, factors, regime = (
        (LM_MAIN_DEPTH, LM_WIDTH, LM_LR, LM_BUDGET, (0.5, 2.0, 4.0), {}) if task == "lm"
        else (VIT_MAIN_DEPTH, VIT_WIDTH, VIT_LR, VIT_BUDGET, (0.5, 2.0, 0.25), VIT_REGIME))
    L, seeds = (main_depth, (0, 1, 2))
    if quick:
        L, width, seeds, budget, regime = 2, 32, (0, 1), QUICK_BUDGET[task], {}
    base = dict(L=L, d=width, lr=lr, **regime)
    runs = [run(task, v, s, **base) for s in seeds for v in ("residual", "dhc4")]
    runs += [run(task, v, s, **(base | {"lr": lr * f})) for f in factors for s in seeds[:2] for v in ("residual", "dhc4")]
    confounds, comparisons = confound_controls(task, seeds, base)
    if task == "lm" and not quick:  # after every other control: added once the sweep above was read
        confounds += [run(task, "dhc4", s, **(base | {"lr": lr * LM_DHC4_TOP_LR})) for s in seeds[:2]]
    return Study("controls", task, budget, tuple(runs + confounds), choice_seeds=seeds,
                 about=f"controls at depth {L}, width {width}: learning rate, output init, parameters",
                 base_knobs=base, comparisons=comparisons)


# Seeds per variant of the main grids: the baseline and the headline variant get 6 (seeds 0-2 chose the settings,
# 3-5 confirm them), every other variant 3 (the choice seeds: the secondary claims are compared on them, paired
# with the baseline; with 2 seeds their differences sat within the noise). SEEDS=N raises every variant to N.
MAIN_SEEDS = {"residual": 6, "dhc1": 3, "dhc2": 3, "dhc4": 6, "dhc8": 3, "dhc4-notanh": 3, "shc2": 3, "shc4": 3,
              "mhc4": 3}
# The LM's secondary variants on the confirmation seeds 3-5 as well: on the choice seeds their differences from
# DHC x4 (0.001-0.02) sat within both the seed noise and the float-order noise of one HC run (results/README.md 3),
# so three more paired seeds each, none of them used for a choice, read the secondary claims again (added after the
# first read of the grid; in the runner's order they follow seed 2's variants).
MAIN_SEEDS_BY_TASK = {"lm": {v: 6 for v in MAIN_SEEDS}, "vit": MAIN_SEEDS}
CHOICE_SEEDS, CONFIRM_SEEDS = (0, 1, 2), (3, 4, 5)

def scaled_study(task: str, scale: str, seeds: int | None = None) -> Study:
    """The grid of a GPU scale: its config is the whole recipe (steps, batch, LR), so runs carry no knobs."""
    if task not in BASE_CONFIGS[scale]:
        raise ValueError(f"there is no {scale}-scale {task} recipe; {scale} has {sorted(BASE_CONFIGS[scale])}")
    counts = {v: max(n, seeds or 0) for v, n in SCALED_GRIDS[scale].items()}
    runs = tuple(run(task, v, s) for s in range(max(counts.values())) for v, n in counts.items() if s < n)
    return Study("main", task, Budget(steps=0, batch_size=0, val_every=0), runs,
                 choice_seeds=tuple(range(max(counts.values()))),
                 about=f"the {scale}-scale recipe ({BASE_CONFIGS[scale][task]}), paired by seed")


# The HC paper's secondary claims as paired comparisons between variants (row, reference, question): the
# n-ordering (Fig. 5, Table 1: n = 1 gains least, x2 < x4, x8 about x4), tanh (Table 3), dynamic against static
# (Table 1), and mHC against HC (the mHC paper, at the LR chosen for DHC x4).
SECONDARY_CLAIMS = (
    ("dhc2", "dhc1", "n-ordering: DHC x2 against x1"),
    ("dhc4", "dhc2", "n-ordering: DHC x4 against x2"),
    ("dhc8", "dhc4", "n-ordering: DHC x8 against x4"),
    ("dhc4-notanh", "dhc4", "tanh: DHC x4 without it"),
    ("shc2", "dhc2", "static against dynamic: SHC x2 against DHC x2"),
    ("shc4", "dhc4", "static against dynamic: SHC x4 against DHC x4"),
    ("mhc4", "dhc4", "mHC x4 against DHC x4 (at DHC x4's LR)"),
)


# mHC x4 at half and twice the grid's LR (chosen for the baseline and DHC x4), on choice seeds 0-1: whether mHC's
# standing in the grid is its LR's.
MHC_LR_FACTORS, MHC_LR_SEEDS = (0.5, 2.0), (0, 1)


def main_study(task: str, quick: bool = False, seeds: int | None = None) -> Study:
    """The baseline-vs-HC grid of a task: every variant, paired by seed, in the regime its depth study chose (LM:
    LM_MAIN_DEPTH at LM_MAIN_LR; ViT: VIT_MAIN_DEPTH at VIT_MAIN_LR in VIT_REGIME, and DHC x4 also at its own best
    LR), plus controls on the choice seeds at the grid's own settings: cost (the baseline trained for DHC x4's
    wall-clock time, `residual-steps1100` for the LM), parameters and output init (`confound_controls`). Last, the
    seeds added after the confirmation was read: the LM's LM_ADDED_VARIANTS on LM_ADDED_SEEDS; the ViT's headline
    pair on VIT_ADDED_SEEDS, then its output-init controls at DHC x4's own LR."""
    if task == "lm":
        knobs, budget, ratio = {"L": LM_MAIN_DEPTH, "d": LM_WIDTH, "lr": LM_MAIN_LR}, LM_BUDGET, LM_TIME_RATIO
    else:
        knobs = {"L": VIT_MAIN_DEPTH, "d": VIT_WIDTH, "lr": VIT_MAIN_LR, **VIT_REGIME}
        budget, ratio = VIT_BUDGET, VIT_TIME_RATIO
    own_lr = VIT_DHC4_OWN_LR if task == "vit" and not quick else None
    grid, choice, confirm = MAIN_SEEDS_BY_TASK[task], CHOICE_SEEDS, CONFIRM_SEEDS
    if quick:  # a test-sized smoke: the same variants, at most 2 seeds
        knobs, budget = {"L": 1, "d": 32}, QUICK_BUDGET[task]
        grid, choice, confirm = {v: min(n, 2) for v, n in grid.items()}, (0,), (1,)
    counts = {v: max(n, seeds or 0) for v, n in grid.items()}
    steps = knobs.get("steps", budget.steps)
    longer = wall_clock_steps(budget, ratio, steps)
    # Order: the baseline, the headline variant (DHC x4) and the cost control, seed by seed, so an interrupted grid
    # already holds the paired comparison with its confirmation seeds.
    runs = []
    headline = [v for v in ("residual", "dhc4") if v in counts]
    for s in range(max(counts.values())):
        runs += [run(task, v, s, **knobs) for v in headline if s < counts[v]]
        if own_lr and s < counts["dhc4"]:
            runs.append(run(task, "dhc4", s, **(knobs | {"lr": own_lr})))
        if s in choice:
            runs.append(run(task, "residual", s, **(knobs | {"steps": longer})))
    # Then the confound controls at the grid's own settings (its LR can differ from the controls study's), on the
    # choice seeds; then every other variant, seed by seed.
    confounds, controls = confound_controls(task, choice, knobs)
    runs += confounds
    for s in range(max(counts.values())):
        runs += [run(task, v, s, **knobs) for v, n in counts.items() if v not in headline and s < n]
    secondary = tuple(c for c in SECONDARY_CLAIMS if c[0] in counts and c[1] in counts)
    if "mhc4" in counts and not quick:
        lrs = [f * knobs["lr"] for f in MHC_LR_FACTORS]
        runs += [run(task, "mhc4", s, **(knobs | {"lr": lr})) for s in MHC_LR_SEEDS for lr in lrs]
        secondary += tuple((f"mhc4-lr{lr:g}", ref, f"mHC x4's own LR: at {f:g}x the grid's LR, against {what}")
                           for f, lr in zip(MHC_LR_FACTORS, lrs)
                           for ref, what in (("mhc4", "mHC x4 at the grid's"), ("dhc4", "DHC x4")))
        if own_lr:  # the ViT's mHC x4 is best at the grid's LR (seeds 0-1), DHC x4 at its own: each at its best
            secondary += (("mhc4", f"dhc4-lr{own_lr:g}", f"mHC x4 at the grid's LR ({knobs['lr']:g}, its best of the "
                           f"three) against DHC x4 at its own ({own_lr:g})"),)
    # The added seeds of the headline pair last: the grid as first planned comes before them (SEEDS=N >= 7 makes
    # them ordinary seeds of every variant instead).
    if own_lr:  # the ViT's headline pair at both LRs (not QUICK's)
        added, added_variants = tuple(s for s in VIT_ADDED_SEEDS if s >= max(counts.values())), headline
    else:  # the LM's secondary variants (not QUICK's)
        added = tuple(s for s in LM_ADDED_SEEDS if task == "lm" and not quick and s >= max(counts.values()))
        added_variants = tuple(v for v in LM_ADDED_VARIANTS if v in counts)
    for s in added:
        runs += [run(task, v, s, **knobs) for v in added_variants]
        if own_lr:
            runs.append(run(task, "dhc4", s, **(knobs | {"lr": own_lr})))
    own = ()
    if own_lr:
        # The output-init control again at DHC x4's own LR (choice seeds, after everything else): the comparison at
        # each arm's best LR is the one that shows a gain, so it is the one whose init confound matters most.
        runs += [run(task, "dhc4-init-none", s, **(knobs | {"lr": own_lr})) for s in choice]
        # Without it DHC x4 lost half its gain there (results/README.md 4b), so the other arm too: the baseline
        # with DHC x4's halved init at DHC x4's LR (where the plain baseline breaks down).
        runs += [run(task, "residual-init-0.5", s, **(knobs | {"lr": own_lr})) for s in choice]
        mine, bare, halved = (f"{v}-lr{own_lr:g}" for v in ("dhc4", "dhc4-init-none", "residual-init-0.5"))
        own = ((mine, "residual", f"each arm at its own best LR: DHC x4 at {own_lr:g}, the baseline at the grid's "
                f"{knobs['lr']:g}"),
               (bare, mine, f"output init at DHC x4's own LR ({own_lr:g}): DHC x4 without the halved init"),
               (bare, "residual", "output init at each arm's own LR: DHC x4 without the halved init against the "
                "baseline"),
               (halved, "residual", f"output init at DHC x4's own LR: the baseline with the halved init at {own_lr:g} "
                "against the baseline at its own"),
               (mine, halved, f"output init at DHC x4's own LR: DHC x4 against the baseline with the same init and "
                f"LR ({own_lr:g})"),
               # the parameter and cost controls of that comparison need no runs of their own: the deeper baseline
               # and the longer one, each at the baseline's LR
               (mine, f"residual-L{knobs['L'] + 1}", f"parameters at each arm's own LR: DHC x4 at {own_lr:g} against "
                f"the baseline one block deeper at {knobs['lr']:g}"),
               (mine, f"residual-steps{longer}", f"equal wall-clock at each arm's own LR: DHC x4 at {own_lr:g} "
                f"({steps} steps) against the baseline given {ratio:g}x the steps at {knobs['lr']:g}"))
    # Last of all, the second added set: the pair at each arm's best LR only, seed by seed.
    added2 = tuple(s for s in VIT_ADDED2_SEEDS if own_lr and s >= max(counts.values()))
    for s in added2:
        runs += [run(task, "residual", s, **knobs), run(task, "dhc4", s, **(knobs | {"lr": own_lr}))]
    if task == "lm" and not quick:  # the LM's last control, added after everything above was read
        runs += [run(task, "dhc4-init-multiply", s, **knobs) for s in LM_INIT_MULTIPLY_SEEDS]
        controls += (("dhc4-init-multiply", "dhc4", "output init: DHC x4 with the std multiplied by sqrt(n) (2x), "
                      "not divided"),
                     ("dhc4-init-multiply", "residual", "output init: DHC x4 with the multiplied init against the "
                      "baseline"))
        runs += [run(task, "dhc4", s, **(knobs | {"fused": True})) for s in LM_FUSED_SEEDS]
        controls += (("dhc4-fused", "dhc4", "float order: DHC x4 with the C++ one-pass connections (HCConfig.fused), "
                      "the same function with its sums in another order"),
                     ("dhc4-fused", "residual", "float order: DHC x4 with the C++ one-pass connections against the "
                      "baseline"))
    if own_lr:  # the ViT's, the same third reading at DHC x4's own LR, added after everything above was read
        runs += [run(task, "dhc4-init-multiply", s, **(knobs | {"lr": own_lr})) for s in VIT_INIT_MULTIPLY_SEEDS]
        mine, more = f"dhc4-lr{own_lr:g}", f"dhc4-init-multiply-lr{own_lr:g}"
        own += ((more, mine, f"output init at DHC x4's own LR ({own_lr:g}): DHC x4 with the std multiplied by "
                 "sqrt(n) (2x), not divided"),
                (more, "residual", "output init at each arm's own LR: DHC x4 with the multiplied init against the "
                 "baseline"))
    comparisons = (("dhc4", f"residual-steps{longer}", f"equal wall-clock: DHC x4 ({steps} steps) against the "
                    f"baseline given {ratio:g}x the steps"), *own, *controls, *secondary)
    return Study("main", task, budget, tuple(runs), choice_seeds=choice, confirm_seeds=confirm,
                 added_seeds=added, added2_seeds=added2, about="every residual variant against the baseline, paired by seed", base_knobs=knobs,
                 comparisons=comparisons)


STUDIES = {"main": main_study, "depth": depth_study, "depth-grid-lr": depth_grid_lr_study, "controls": controls_study}


def studies(name: str, tasks: list[str], quick: bool = False, seeds: int | None = None,
            scale: str = "cpu") -> list[Study]:
    if scale != "cpu":
        if name != "main":
            raise ValueError(f"--scale {scale} runs the main grid only (the {name} study is a CPU study)")
        return [scaled_study(t, scale, seeds) for t in tasks if t in BASE_CONFIGS[scale]]
    if name == "main":
        return [main_study(t, quick, seeds) for t in tasks]
    if name == "depth-grid-lr" and len(tasks) > 1:  # an LM study: `--task all` means the LM's
        tasks = ["lm"]
    return [STUDIES[name](t, quick) for t in tasks]


# The HC paper's numbers to print beside ours (Zhu et al. 2025, its OLMo-1B and ViT-Base result tables). LM: OLMo-1B, 500B tokens, V2 eval loss. ViT: ViT-Base top-1.
PAPER = {
    "lm": {"residual": 2.811, "dhc1": 2.819, "dhc2": 2.802, "dhc4": 2.781, "dhc8": 2.778, "dhc4-notanh": 2.779,
           "shc2": 2.799, "shc4": 2.791},
    "vit": {"residual": 76.38, "shc2": 77.60, "dhc2": 77.26},
}

# GPU-hours per run (not run here; estimates). Mid: lit_hc.analysis.training_flops of GPT-2 small for 10B tokens
# (8.5e18) at 40% of an H100's dense bf16 peak (989 TFLOP/s), tested in tests/test_configs.py. Paper: 6 * params *
# tokens for OLMo-1B at 40%; ViT-B/16 from 3 * 17.6 GFLOPs per image, 1.28M images x 300 epochs at 30%.
GPU_HOURS = {"mid": {"lm": 6}, "paper": {"lm": 2_480, "vit": 19}}
