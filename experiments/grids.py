"""The experiments, as data: which runs each study makes, on what budget, with which seeds.

A run is (task, residual variant, seed, knobs). Knobs are the few settings a study varies on top of the task's
base config (depth, width, learning rate); a run's name spells all of them, e.g. `dhc4-L16-d64-lr0.003-s2`,
so two runs with different settings never share a folder (the runner also checks a fingerprint of the full
argument list and refuses a folder that holds another configuration). All runs of a task live in one pool,
results/<task>/runs/<name>/; a study is a view on that pool, so a run two studies need is made once.

Pairing: seed s sets the initialisation and the data order (TextDataModule draws window i from a generator seeded
by (s, i)), identically for every variant, so run `<variant>-...-s<s>` is paired with `residual-...-s<s>`.

Held-out seeds: every study names the seeds its settings were chosen on (`choice_seeds`) and the seeds that were
never used for a choice (`confirm_seeds`); summaries report the two sets apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field

VARIANTS = ("residual", "dhc1", "dhc2", "dhc4", "dhc8", "dhc4-notanh", "shc2", "shc4", "mhc4")

# knob -> the CLI argument it sets, per task. Keys are short because they go into run names.
KNOBS: dict[str, dict[str, str]] = {
    "L": {"lm": "--model.init_args.arch.n_layer", "vit": "--model.init_args.arch.depth"},
    "d": {"lm": "--model.init_args.arch.n_embd", "vit": "--model.init_args.arch.dim"},
    "lr": {"lm": "--model.init_args.optim.lr", "vit": "--model.init_args.optim.lr"},
    # a longer run with the same warmup; the cosine stretches to the new end (the equal-wall-clock control)
    "steps": {"lm": "--trainer.max_steps", "vit": "--trainer.max_steps"},
}


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
        return "-".join([self.variant, *(f"{k}{v:g}" for k, v in self.knobs), f"s{self.seed}"])

    def knob(self, key: str):
        return dict(self.knobs).get(key)


def run(task: str, variant: str, seed: int, **knobs) -> Run:
    unknown = set(knobs) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown knobs {sorted(unknown)}; known: {list(KNOBS)}")
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
    about: str = ""
    base_knobs: dict = field(default_factory=dict)  # the knobs every run of the study shares unless it varies them
    # (row, reference, question): paired differences beside the ones to the baseline, e.g. a control's
    comparisons: tuple[tuple[str, str, str], ...] = ()

    @property
    def seeds(self) -> tuple[int, ...]:
        return self.choice_seeds + self.confirm_seeds


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

# ViT regime of the depth study and the main grid: the generated shapes (10 classes, 32 px, 5,000 training and
# 3,000 validation images: 300 per class, so a top-1 difference of 2 points is about one binomial std of a
# difference instead of 1.6 points each), patch 4 (64 tokens), width 64, 4 heads, MLP ratio 2, batch 64, 600 steps
# (38,400 images, 7.7 epochs), AdamW 2e-3 (the base config's LR, fixed before any HC run), warmup 60 steps then
# cosine to 0.05x. Step time on this 2-core CPU, residual / DHC x4 (a 60-step probe, medians of 12 logged rates):
# L=4 0.079 / 0.156 s, L=12 0.219 / 0.415 s. Depths run 12 first (the main grid's), then 4, then 8.
VIT_BUDGET = Budget(steps=600, batch_size=64, val_every=100)
VIT_WIDTH, VIT_LR = 64, 2e-3
VIT_DEPTHS = (12, 4, 8, 24, 32)  # 24 and 32 added later, as the LM study's depths reach 32
VIT_MAIN_DEPTH = 24  # the controls at L = 24, where DHC x4's gain appeared (12 before)
# DHC x4's step time over the baseline's at VIT_MAIN_DEPTH in that probe: 0.415 / 0.219 = 1.89.
VIT_TIME_RATIO = 1.9

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


def depth_study(task: str = "lm", quick: bool = False) -> Study:
    """Does HC's gain grow with depth at fixed width? Residual vs DHC x4 against depth, equal tokens (images).

    LM: L in DEPTHS at width 64; ViT: L in VIT_DEPTHS at width 64. Seeds 0-2 are the choice set: the main grid's
    depth is picked from this study. Runs go depth by depth in the tuple's order, every seed of a depth before the
    next, so an interrupted study already holds whole depths. QUICK: L in {1, 2}, width 32.
    """
    if task == "lm":
        depths, width, lr, budget = DEPTHS, LM_WIDTH, LM_LR, LM_BUDGET
    else:
        depths, width, lr, budget = VIT_DEPTHS, VIT_WIDTH, VIT_LR, VIT_BUDGET
    seeds = (0, 1, 2)
    if quick:
        depths, width, seeds, budget = (1, 2), 32, (0, 1), QUICK_BUDGET[task]
    runs = tuple(run(task, v, s, L=L, d=width, lr=lr) for L in depths for s in seeds for v in ("residual", "dhc4"))
    return Study("depth", task, budget, runs, choice_seeds=seeds,
                 about="paired Δ (DHC x4 − residual) of the final validation loss against depth at width "
                       f"{width}, equal {'tokens' if task == 'lm' else 'images'}", base_knobs={"d": width, "lr": lr})


# The depth the LM main grid and its controls run at, chosen from the depth study on seeds 0-2 (results/lm/depth).
LM_MAIN_DEPTH = 16
# The main grid's learning rate, chosen on seeds 0-1 from the controls' LR sweep at LM_MAIN_DEPTH
# (results/lm/controls): 2x the depth study's LR is the baseline's best (2.060 against 2.137 at 1x and 2.301 at
# 4x) and within 0.02 of DHC x4's best (1.946 at 2x, 1.929 at 4x), so both arms run at (or near) their best.
LM_MAIN_LR = 2 * LM_LR
# DHC x4's step time over the baseline's at LM_MAIN_DEPTH in the depth study (seeds 0-2 on this 2-core CPU:
# 0.421/0.229, 0.433/0.209, 0.353/0.226 s = 1.84, 2.07, 1.56, ratio of the means 1.82): the equal-wall-clock
# control gives the baseline this many times the steps, rounded to a whole validation interval so that its
# last evaluation is its final step (600 x 1.8 -> 1,100 steps).
LM_TIME_RATIO = 1.8


def wall_clock_steps(budget: Budget, ratio: float) -> int:
    return budget.val_every * round(budget.steps * ratio / budget.val_every)


def controls_study(task: str = "lm", quick: bool = False) -> Study:
    """The controls a reviewer asks for, at the main grid's depth, each paired by seed with the baseline there:

    - learning rate: residual and DHC x4 at other multiples of the depth study's LR (seeds 0-1), beside 1x
      (seeds 0-2). LM: 0.5x was worse than 1x for both arms on both seeds (residual 2.250, 2.239 vs 2.162,
      2.111; DHC x4 2.184 vs 2.062 on seed 0), so the sweep extends upwards (4x) instead of to 0.25x; 2x then
      beat 1x for both arms (seeds 0-1: residual 2.060 vs 2.137, DHC x4 1.946 vs 2.040), so 4x ran next, before
      the other controls. ViT: 2x, then 0.5x;
    - output-init confound: the baseline with DHC x4's halved output-projection init; DHC x4 without it;
    - parameters: the baseline one block deeper, more parameters than DHC x4 adds.

    The cost control (the baseline given DHC x4's wall-clock time) is part of the main grid, at its LR.
    """
    main_depth, width, lr, budget, factors = ((LM_MAIN_DEPTH, LM_WIDTH, LM_LR, LM_BUDGET, (0.5, 2.0, 4.0)) if task == "lm"
                                              else (VIT_MAIN_DEPTH, VIT_WIDTH, VIT_LR, VIT_BUDGET, (0.5, 0.25, 2.0)))
    L, seeds = (main_depth, (0, 1, 2))
    if quick:
        L, width, seeds, budget = 2, 32, (0, 1), QUICK_BUDGET[task]
    base = dict(L=L, d=width, lr=lr)
    runs = [run(task, v, s, **base) for s in seeds for v in ("residual", "dhc4")]
    runs += [run(task, v, s, **(base | {"lr": lr * f})) for f in factors for s in seeds[:2] for v in ("residual", "dhc4")]
    runs += [run(task, "residual", s, **(base | {"L": L + 1})) for s in seeds]
    runs += [run(task, v, s, **base) for s in seeds for v in ("residual-init-0.5", "dhc4-init-none")]
    comparisons = (
        ("residual-init-0.5", "residual", "output init: the baseline with DHC x4's halved output-projection init"),
        ("dhc4-init-none", "dhc4", "output init: DHC x4 without the halved init"),
        (f"residual-L{L + 1}", "residual", "parameters: the baseline one block deeper"),
        ("dhc4", f"residual-L{L + 1}", "parameters: DHC x4 against the deeper baseline (more parameters than DHC x4)"),
    )
    return Study("controls", task, budget, tuple(runs), choice_seeds=seeds,
                 about=f"controls at depth {L}, width {width}: learning rate, output init, parameters",
                 base_knobs=base, comparisons=comparisons)


# Seeds per variant of the main grids: the baseline and the headline variant get 6 (seeds 0-2 chose the settings,
# 3-5 confirm them), every other variant 2. SEEDS=N raises every variant to N.
MAIN_SEEDS = {"residual": 6, "dhc1": 2, "dhc2": 2, "dhc4": 6, "dhc8": 2, "dhc4-notanh": 2, "shc2": 2, "shc4": 2,
              "mhc4": 2}
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


def main_study(task: str, quick: bool = False, seeds: int | None = None) -> Study:
    """The baseline-vs-HC grid of a task: every variant, paired by seed, in the regime its depth study chose (LM:
    LM_MAIN_DEPTH at LM_MAIN_LR; ViT: VIT_MAIN_DEPTH at VIT_LR), plus the cost control on the choice seeds: the
    baseline trained for DHC x4's wall-clock time (`residual-steps1100`)."""
    if task == "lm":
        knobs, budget, ratio = {"L": LM_MAIN_DEPTH, "d": LM_WIDTH, "lr": LM_MAIN_LR}, LM_BUDGET, LM_TIME_RATIO
    else:
        knobs, budget, ratio = {"L": VIT_MAIN_DEPTH, "d": VIT_WIDTH, "lr": VIT_LR}, VIT_BUDGET, VIT_TIME_RATIO
    grid, choice, confirm = MAIN_SEEDS, CHOICE_SEEDS, CONFIRM_SEEDS
    if quick:  # a test-sized smoke: the same variants, at most 2 seeds
        knobs, budget = {"L": 1, "d": 32}, QUICK_BUDGET[task]
        grid, choice, confirm = {v: min(n, 2) for v, n in grid.items()}, (0,), (1,)
    counts = {v: max(n, seeds or 0) for v, n in grid.items()}
    longer = wall_clock_steps(budget, ratio)
    # Order: the baseline, the headline variant (DHC x4) and the cost control, seed by seed, so an interrupted grid
    # already holds the paired comparison with its confirmation seeds; then every other variant, seed by seed.
    runs = []
    headline = [v for v in ("residual", "dhc4") if v in counts]
    for s in range(max(counts.values())):
        runs += [run(task, v, s, **knobs) for v in headline if s < counts[v]]
        if s in choice:
            runs.append(run(task, "residual", s, **knobs, steps=longer))
    for s in range(max(counts.values())):
        runs += [run(task, v, s, **knobs) for v, n in counts.items() if v not in headline and s < n]
    comparisons = (("dhc4", f"residual-steps{longer}", f"equal wall-clock: DHC x4 ({budget.steps} steps) against the "
                    f"baseline given {ratio:g}x the steps"),)
    return Study("main", task, budget, tuple(runs), choice_seeds=choice, confirm_seeds=confirm,
                 about="every residual variant against the baseline, paired by seed", base_knobs=knobs,
                 comparisons=comparisons)


STUDIES = {"main": main_study, "depth": depth_study, "controls": controls_study}


def studies(name: str, tasks: list[str], quick: bool = False, seeds: int | None = None,
            scale: str = "cpu") -> list[Study]:
    if scale != "cpu":
        if name != "main":
            raise ValueError(f"--scale {scale} runs the main grid only (the {name} study is a CPU study)")
        return [scaled_study(t, scale, seeds) for t in tasks if t in BASE_CONFIGS[scale]]
    if name == "main":
        return [main_study(t, quick, seeds) for t in tasks]
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
