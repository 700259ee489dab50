"""Does a cheap Q_r update select the same recognition set A_r as the faithful one? (issue 11)

A paired measurement in two steps:

``record``: a real ``pow_qmix`` run on ``predator_prey/punish_4`` (``experiment=pymarl2``: the
episode regime, 128 whole episodes per learner call) with the faithful Q_r update, which saves,
for each learner call, exactly what the Q_r update receives (ΔQ, state, taken actions, TD(λ)
targets of the valid samples), plus Q_r's weights and optimiser state before the first recorded
call. ``--warm-calls`` learner calls run first (not recorded; ``--warm-fraction`` lets them use a
cheap Q_r to get past POW's warm-up sooner).

``compare``: replays that stream of batches into several recognition networks that all start from
the recorded weights and optimiser state: the faithful update (every valid sample, 10 steps) and
the cheap variants. After each call's update every network scores λΔQ on the call's valid
samples; we report A_r membership agreement with the faithful network (fraction of samples where
``|λΔQ| < C`` agrees) and the relative difference of the A_r fraction, per call and averaged,
with each variant's Q_r-update time relative to the faithful one's (same process, back to back).

    OMP_NUM_THREADS=1 python benchmarks/recognition_agreement.py record --calls 30 --out /tmp/qr_stream
    OMP_NUM_THREADS=1 python benchmarks/recognition_agreement.py compare /tmp/qr_stream

Targets (issue 11): agreement ≥ 95 %, fraction differs ≤ 10 % relative.

Measured (punish_4, seed 0, the first 31 learner calls of a faithful run, ε ≈ 0.95 → 0.86; mean
agreement / min / mean relative |Δ fraction|):
``ulp_floor`` (faithful update from weights moved by ~1 ulp) 0.983 / 0.958 / 0.3 %;
``bf16`` (full batch, ``recognition_bf16``) 0.943 / 0.896 / 3.4 % (0.975 over the first 15 calls);
``recognition_batch_fraction=0.1`` 0.819 / 0.701 / 36 %; the same with disjoint chunks of one
shuffle per call (``draw=epoch``) 0.854; fraction 0.2 epoch 0.877. Over the first 15 calls:
fraction 0.25 (10 steps) 0.92, 0.5 distinct samples 0.93, 0.5 with bf16 0.92, 0.25 x 8 steps, 0.1 x 20
and 0.5 x 5 far worse (the A_r set depends on the exact number of steps). Every variant's agreement
falls call after call, the floor's too: A_r is sensitive to any change of Q_r's trajectory.

``--restart-each-call`` separates one call's selection from that compounding: every variant starts
each call from the faithful network and optimiser state before that call. Measured 2026-12-02 on
the same stream, calls 0-4 (125k samples; agreement per call):
``ulp_floor`` 1.000 (all calls); ``bf16`` 0.999, 1.000, 1.000, 1.000, 1.000 with the same A_r
fraction to 3 digits; ``recognition_batch_fraction=0.1`` 0.976, 0.989, 0.985, 0.973, 0.929 (A_r
fraction off by up to 9 %); fraction 0.25 0.962-0.993. So bf16 matmuls select the faithful set in a
call; what separates the compounded runs is the chaotic growth of any perturbation over calls
(faster for bf16, whose per-call perturbation is larger than one ulp).

The cheap option (README "POW's settings"), ``--restart-each-call`` over all 31 calls (794k
samples; mean / min agreement, mean |Δ fraction|, Q_r time vs faithful), 2026-12-02:
fraction 0.3 (with replacement) 0.965 / 0.924 / 4.6 % / 0.26x; 0.4 (with replacement) 0.970 /
0.920 / 3.9 % / 0.36x; **0.4 distinct samples (``draw=subset``, what
``recognition_batch_fraction`` now does) 0.976 / 0.940 / 3.5 % / 0.36x**; 0.5 distinct 0.980 /
0.946 / 3.0 % / 0.47x; 0.5 distinct with bf16 0.980 / 0.946 / 3.0 % / 0.31x.

After POW's warm-up (``record --calls 30 --warm-calls 20 --warm-fraction 0.4
--no-weighted-steps 30000 --seed 1``: learner calls 20-50, weighting on). Per call (restart):
0.4 distinct 0.984 / 0.957 / 1.4 %, bf16 0.999 / 0.998 / 0.1 %. Compounded, no restart:
``ulp_floor`` 0.994 / 0.982 / 0.4 %; 0.4 distinct 0.962 / 0.933 / 2.3 %; 0.2 distinct 0.947 /
0.929 / 3.8 % (fails); bf16 0.985 / 0.950 / 1.3 %.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path
from tempfile import mkdtemp

import torch

N_ACTIONS = 6


# --------------------------------------------------------------------------- record
def record(args: argparse.Namespace) -> None:
    from benchmarl_pow.compose import compose_experiment

    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    overrides = [
        "algorithm=pow_qmix",
        "task=predator_prey/punish_4",
        "experiment=pymarl2",
        "experiment.loggers=[]",
        "experiment.create_json=False",
        "experiment.evaluation=False",
        "experiment.checkpoint_interval=0",
        f"seed={args.seed}",
    ]
    if args.no_weighted_steps is not None:
        overrides.append(f"algorithm.no_weighted_steps={args.no_weighted_steps}")
    experiment = compose_experiment(overrides, save_folder=mkdtemp(), callbacks=[])
    loss = experiment.losses["agents"]
    faithful_fraction = loss.recognition_batch_fraction
    original = loss._update_recognition
    state = {"call": 0}
    meta: dict = {
        "threshold": float(loss.rule.threshold),
        "n_agents": loss.n_agents,
        "n_actions": loss.n_actions,
        "recognition_updates": loss.recognition_updates,
        "first_recognition_updates": loss.first_recognition_updates,
        "warm_calls": args.warm_calls,
        "seed": args.seed,
        "calls": [],
    }
    timer = {"start": time.time()}

    def hooked(delta_q, s, onehot, target, valid=None):
        call = state["call"]
        state["call"] += 1
        if call < args.warm_calls:
            loss.recognition_batch_fraction = args.warm_fraction
            result = original(delta_q, s, onehot, target, valid)
            loss.recognition_batch_fraction = faithful_fraction
            return result
        n = loss.n_agents
        rows = valid.reshape(-1) if valid is not None else torch.ones(delta_q[..., 0].numel(), dtype=torch.bool)
        dq = delta_q.reshape(-1, n)[rows].contiguous()
        st = s.reshape(-1, s.shape[-1])[rows]
        act = onehot.reshape(-1, n, loss.n_actions)[rows].argmax(-1).to(torch.uint8)
        y = target.reshape(-1, 1)[rows].contiguous()
        binary = bool(((st == 0) | (st == 1)).all())
        if call == args.warm_calls:
            optimizer = loss.recognition_optimizer
            torch.save(
                {
                    "recognition_mixer": copy.deepcopy(loss.recognition_mixer.state_dict()),
                    "optimizer": copy.deepcopy(optimizer.state_dict()) if optimizer is not None else None,
                    "optimizer_defaults": dict(optimizer.defaults) if optimizer is not None else None,
                    "first_call": int(loss.n_learner_calls) == 0,
                },
                out / "start.pt",
            )
        result = original(delta_q, s, onehot, target, valid)
        with torch.no_grad():
            _, ldq = loss.recognition_mixer(dq, st, torch.nn.functional.one_hot(act.long(), loss.n_actions).float())
            in_set = loss.rule.in_set(ldq)
        k = call - args.warm_calls
        torch.save(
            {
                "delta_q": dq,
                "state": st.to(torch.uint8) if binary else st,
                "state_binary": binary,
                "action": act,
                "target": y,
                "run_in_set_fraction": float(in_set.float().mean()),
            },
            out / f"call_{k:03d}.pt",
        )
        meta["calls"].append(
            {"n": int(dq.shape[0]), "run_in_set_fraction": float(in_set.float().mean()),
             "frames": int(experiment.total_frames), "elapsed_s": time.time() - timer["start"]}
        )
        with open(out / "meta.json", "w") as f:
            json.dump(meta, f, indent=1)
        print(
            f"call {k:3d}: {dq.shape[0]} samples, A_r fraction {meta['calls'][-1]['run_in_set_fraction']:.3f}, "
            f"frames {experiment.total_frames}, {time.time() - timer['start']:.0f} s",
            flush=True,
        )
        return result

    loss._update_recognition = hooked
    prefill = experiment.regime.start_training_episodes // 8
    experiment.config.max_n_iters = prefill + args.warm_calls + args.calls
    experiment._collection_loop()


# -------------------------------------------------------------------------- compare
class Variant:
    """One recognition network and its update rule.

    ``fraction``: the share of the call's valid samples drawn for each step (``draw``: with
    replacement by default, as the loss drew them before; ``subset``, distinct samples, is what
    ``recognition_batch_fraction`` does now); ``steps``: inner steps per call (first call:
    ``first_steps``); ``lr_scale``: multiplies the optimiser's learning rate; ``bf16``: the steps' forward under CPU autocast to
    bfloat16 (matmuls in bf16 with fp32 accumulation; the A_r test itself stays float32).
    """

    def __init__(self, name: str, fraction: float = 1.0, steps: int = 10, first_steps: int = 20,
                 lr_scale: float = 1.0, bf16: float = 0.0, draw: str = "replace",
                 perturb: float = 0.0, seed: int = 0):
        self.name, self.fraction, self.steps, self.first_steps = name, fraction, steps, first_steps
        self.lr_scale = lr_scale
        self.bf16 = bool(bf16)
        if draw not in ("replace", "subset", "epoch"):
            raise ValueError(f"draw must be replace, subset or epoch, got {draw!r}")
        self.draw = draw
        self.perturb = perturb
        self.generator = torch.Generator().manual_seed(seed)
        self.seconds = 0.0

    def setup(self, module: torch.nn.Module, start: dict) -> None:
        self.module = copy.deepcopy(module)
        self.module.load_state_dict(start["recognition_mixer"])
        self._perturb()
        defaults = dict(start["optimizer_defaults"] or {"lr": 1e-3})
        self.optimizer = torch.optim.Adam(self.module.parameters(), **defaults)
        if start["optimizer"] is not None:
            # a copy: Adam's load_state_dict keeps the given moment tensors and updates them in
            # place, so variants set up from one start would share (and corrupt) each other's
            self.optimizer.load_state_dict(copy.deepcopy(start["optimizer"]))
        for group in self.optimizer.param_groups:
            group["lr"] = defaults["lr"] * self.lr_scale
        self.params = list(self.module.parameters())

    def _perturb(self) -> None:
        if self.perturb:  # the noise floor: the faithful update from weights moved by ~1 ulp
            with torch.no_grad():
                for p in self.module.parameters():
                    p.mul_(1 + self.perturb * torch.randn(p.shape, generator=self.generator))

    def restart_from(self, module_state: dict, optimizer_state: dict) -> None:
        """Continue from the given (faithful) network and optimiser state, keeping this variant's
        learning-rate scale: ``--restart-each-call`` measures one call's selection alone."""
        self.module.load_state_dict(module_state)
        # a copy: Adam's load_state_dict keeps the given moment tensors and updates them in place
        self.optimizer.load_state_dict(copy.deepcopy(optimizer_state))
        for group in self.optimizer.param_groups:
            group["lr"] = group["lr"] * self.lr_scale
        self._perturb()

    def update(self, dq, s, oh, y, first: bool, clip: float = 10.0) -> None:
        start = time.perf_counter()
        n = dq.shape[0]
        n_draw = max(1, int(round(self.fraction * n)))
        order = torch.randperm(n, generator=self.generator) if self.draw == "epoch" else None
        for step in range(self.first_steps if first else self.steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
                if n_draw < n:
                    if self.draw == "replace":  # what recognition_batch_fraction did before
                        idx = torch.randint(n, (n_draw,), generator=self.generator)
                    elif self.draw == "subset":  # distinct samples, a fresh subset each step
                        idx = torch.randperm(n, generator=self.generator)[:n_draw]
                    else:  # epoch: disjoint chunks of one shuffle per call, cycled
                        chunks = max(1, n // n_draw)
                        k = step % chunks
                        idx = order[k * n // chunks:(k + 1) * n // chunks]
                    q_r, _ = self.module(dq[idx], s[idx], oh[idx])
                    target = y[idx]
                else:
                    q_r, _ = self.module(dq, s, oh)
                    target = y
            loss = 0.5 * (q_r.float() - target).pow(2).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.params, clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.seconds += time.perf_counter() - start

    @torch.no_grad()
    def in_set(self, dq, s, oh, threshold: float) -> torch.Tensor:
        _, ldq = self.module(dq, s, oh)
        return ldq.abs() < threshold


def parse_variant(text: str) -> Variant:
    """``name:key=value,...`` with keys fraction, steps, first_steps, lr_scale, bf16 (0/1), perturb
    (relative noise on the starting weights: 1e-7 is about one float32 ulp), draw
    (replace: i.i.d. with replacement, as recognition_batch_fraction drew before; subset: distinct
    samples, as it draws now; epoch: one shuffle per call cut into 1/fraction disjoint chunks,
    cycled)."""
    name, _, spec = text.partition(":")
    kwargs = {}
    for item in filter(None, spec.split(",")):
        key, value = item.split("=")
        if key == "draw":
            kwargs[key] = value
        else:
            kwargs[key] = int(value) if key in ("steps", "first_steps") else float(value)
    return Variant(name, **kwargs)


DEFAULT_VARIANTS = [
    "fraction0.1:fraction=0.1",
    "fraction0.2:fraction=0.2",
    "bf16:bf16=1",
    "fraction0.2bf16:fraction=0.2,bf16=1",
]


def compare(args: argparse.Namespace) -> None:
    from benchmarl_pow.modules import RecognitionMixer

    torch.set_num_threads(1)
    stream = Path(args.stream)
    meta = json.loads((stream / "meta.json").read_text())
    start = torch.load(stream / "start.pt", weights_only=False)
    threshold = args.threshold if args.threshold is not None else meta["threshold"]
    n_agents, n_actions = meta["n_agents"], meta["n_actions"]
    files = sorted(stream.glob("call_*.pt"))[: args.calls or None]
    first = torch.load(files[0])
    state_dim = first["state"].shape[-1]
    module = RecognitionMixer(n_agents, n_actions, state_dim)
    faithful = Variant("faithful", 1.0, meta["recognition_updates"], meta["first_recognition_updates"])
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    for v in [faithful, *variants]:
        v.setup(module, start)
    print(f"stream {stream}: {len(files)} calls, C = {threshold}, warm calls before it {meta['warm_calls']}")
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    rows: dict[str, list[tuple[float, float, float, float]]] = {v.name: [] for v in variants}
    header = "call  n      faithful_frac(run)  " + "  ".join(f"{v.name:>22s}" for v in variants)
    print(header + "    (per variant: agreement / A_r fraction)")
    # The faithful network's A_r of every call is cached in the stream folder (with its state after
    # the last cached call), so that variants can be replayed later, or in parallel processes.
    ref_path = stream / f"faithful_reference_C{threshold:g}.pt"
    restart = args.restart_each_call
    if restart:  # every call starts from the faithful state: nothing can be taken from the cache
        args.no_cache = True
    cache = torch.load(ref_path, weights_only=False) if ref_path.exists() and not args.no_cache else None
    cache = cache or {"in_set": [], "seconds": [], "module": None, "optimizer": None}
    if cache["module"] is not None and len(cache["in_set"]) < len(files):
        faithful.module.load_state_dict(cache["module"])
        faithful.optimizer.load_state_dict(cache["optimizer"])
    faithful_seconds = []
    for k, path in enumerate(files):
        data = torch.load(path)
        dq, y = data["delta_q"], data["target"]
        s = data["state"].to(torch.float32)
        oh = torch.nn.functional.one_hot(data["action"].long(), n_actions).to(torch.float32)
        is_first = k == 0 and start["first_call"]
        if restart:
            before_call = (
                copy.deepcopy(faithful.module.state_dict()),
                copy.deepcopy(faithful.optimizer.state_dict()),
            )
        if k < len(cache["in_set"]):
            ref = cache["in_set"][k]
            faithful_seconds.append(cache["seconds"][k])
        else:
            before = faithful.seconds
            faithful.update(dq, s, oh, y, is_first)
            ref = faithful.in_set(dq, s, oh, threshold)
            faithful_seconds.append(faithful.seconds - before)
            cache["in_set"].append(ref)
            cache["seconds"].append(faithful_seconds[-1])
            cache["module"] = faithful.module.state_dict()
            cache["optimizer"] = faithful.optimizer.state_dict()
            if not args.no_cache:
                torch.save(cache, ref_path)
        ref_frac = float(ref.float().mean())
        cells = []
        for v in variants:
            if restart:
                v.restart_from(*before_call)
            v.update(dq, s, oh, y, is_first)
            got = v.in_set(dq, s, oh, threshold)
            agree = float((got == ref).float().mean())
            frac = float(got.float().mean())
            rel = abs(frac - ref_frac) / max(ref_frac, 1e-12)
            rows[v.name].append((agree, frac, rel, ref_frac))
            cells.append(f"{agree:7.3f} / {frac:5.3f} ({rel:4.0%})")
        print(
            f"{k:4d}  {dq.shape[0]:5d}  {ref_frac:5.3f} ({data['run_in_set_fraction']:5.3f})      "
            + "  ".join(f"{c:>22s}" for c in cells),
            flush=True,
        )
    skip = min(args.skip, len(files) - 1)
    print(f"\nsummary over calls {skip}..{len(files) - 1} (first {skip} skipped), targets: "
          "agreement >= 95 %, |Δ fraction| <= 10 % relative")
    print(f"{'variant':>16s}  {'mean agree':>10s}  {'min agree':>9s}  {'mean |Δfrac|/frac':>17s}  "
          f"{'max':>6s}  {'rel. frac of means':>18s}  {'Q_r time vs faithful':>20s}  pass")
    for v in variants:
        r = torch.tensor(rows[v.name][skip:])
        agree_mean, agree_min = float(r[:, 0].mean()), float(r[:, 0].min())
        rel_mean, rel_max = float(r[:, 2].mean()), float(r[:, 2].max())
        rel_of_means = abs(float(r[:, 1].mean()) - float(r[:, 3].mean())) / max(float(r[:, 3].mean()), 1e-12)
        ok = agree_mean >= 0.95 and rel_mean <= 0.10
        print(f"{v.name:>16s}  {agree_mean:10.3f}  {agree_min:9.3f}  {rel_mean:17.1%}  {rel_max:6.0%}  "
              f"{rel_of_means:18.1%}  {v.seconds / sum(faithful_seconds):20.2f}  {'yes' if ok else 'no'}")


def extract(args: argparse.Namespace) -> None:
    """A small recorded batch for tests/test_speed_paths.py: ``--samples`` valid samples of one
    recorded call, the state bit-packed (it is one-hot)."""
    import numpy as np

    data = torch.load(Path(args.stream) / f"call_{args.call:03d}.pt")
    meta = json.loads((Path(args.stream) / "meta.json").read_text())
    assert data["state_binary"], "the state is not binary: nothing to pack"
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(data["delta_q"].shape[0], generator=g)[: args.samples].sort().values
    state = data["state"][idx].numpy().astype(bool)
    small = {
        "delta_q": data["delta_q"][idx].clone(),
        "state_bits": torch.from_numpy(np.packbits(state, axis=-1)),
        "state_dim": state.shape[-1],
        "action": data["action"][idx].clone(),
        "target": data["target"][idx].clone(),
        "threshold": meta["threshold"],
        "source": f"predator_prey/punish_4 pow_qmix seed {meta['seed']}, learner call {args.call}",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    torch.save(small, args.out)
    print(f"wrote {args.out}: {len(idx)} samples of call {args.call}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("record", help="record a faithful pow_qmix run's Q_r inputs")
    r.add_argument("--out", required=True)
    r.add_argument("--calls", type=int, default=30, help="learner calls recorded")
    r.add_argument("--warm-calls", type=int, default=0, help="learner calls before recording")
    r.add_argument("--warm-fraction", type=float, default=1.0,
                   help="recognition_batch_fraction during the warm calls (speed)")
    r.add_argument("--no-weighted-steps", type=int, default=None)
    r.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="replay a recorded stream into faithful and cheap Q_r's")
    c.add_argument("stream")
    c.add_argument("--variant", action="append",
                   help="name:fraction=F,steps=K,first_steps=K1,lr_scale=X,bf16=0|1,perturb=X,draw=replace|subset|epoch (repeatable)")
    c.add_argument("--calls", type=int, default=0, help="use the first N recorded calls (0: all)")
    c.add_argument("--skip", type=int, default=0, help="calls left out of the averages")
    c.add_argument("--restart-each-call", action="store_true",
                   help="every variant starts each call from the faithful network's state before "
                        "that call (one call's selection, no compounding of trajectories)")
    c.add_argument("--threshold", type=float, default=None, help="C (default: the run's)")
    c.add_argument("--no-cache", action="store_true",
                   help="neither read nor write the faithful reference cache")
    e = sub.add_parser("extract", help="a small recorded batch for the tests")
    e.add_argument("stream")
    e.add_argument("--call", type=int, default=10)
    e.add_argument("--samples", type=int, default=2048)
    e.add_argument("--out", default="tests/data/recognition_batch.pt")
    args = parser.parse_args()
    {"record": record, "compare": compare, "extract": extract}[args.mode](args)


if __name__ == "__main__":
    main()
